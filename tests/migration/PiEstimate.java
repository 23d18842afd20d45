/**
 * Prints one estimate of pi on one line, as the prototype's pi.jar did: the first TERMS
 * terms of the Leibniz series (deterministic, so tests can check the value).
 */
public final class PiEstimate {
    private PiEstimate() {}

    public static void main(String[] args) {
        long terms = Long.parseLong(args[0]);
        double sum = 0.0;
        for (long k = 0; k < terms; k++) {
            sum += (k % 2 == 0 ? 1.0 : -1.0) / (2 * k + 1);
        }
        System.out.println(4.0 * sum);
    }
}
