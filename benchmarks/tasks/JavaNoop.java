/** Benchmark jar (the java-noop workload): prints one line and returns. */
public final class JavaNoop {
    private JavaNoop() {}

    public static void main(String[] args) {
        System.out.println("noop");
    }
}
