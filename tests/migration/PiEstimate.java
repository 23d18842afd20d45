import java.util.SplittableRandom;

/** Prints one Monte Carlo estimate of pi from SAMPLES points, as the prototype's pi.jar did. */
public final class PiEstimate {
    private PiEstimate() {}

    public static void main(String[] args) {
        long samples = Long.parseLong(args[0]);
        SplittableRandom random = new SplittableRandom();
        long inside = 0;
        for (long i = 0; i < samples; i++) {
            double x = random.nextDouble();
            double y = random.nextDouble();
            if (x * x + y * y <= 1.0) {
                inside++;
            }
        }
        System.out.println(4.0 * inside / samples);
    }
}
