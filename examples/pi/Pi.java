import java.util.SplittableRandom;

/**
 * Monte Carlo estimate of pi: draws SAMPLES points in the unit square and counts
 * those inside the quarter circle.
 *
 * <p>Usage: {@code java -jar pi.jar SAMPLES [SEED]}. Prints {@code "HITS SAMPLES"}
 * on one line; pi is about 4 * HITS / SAMPLES.
 */
public final class Pi {
    private Pi() {}

    public static void main(String[] args) {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: java -jar pi.jar SAMPLES [SEED]");
            System.exit(2);
        }
        long samples = Long.parseLong(args[0]);
        if (samples < 0) {
            System.err.println("SAMPLES must not be negative");
            System.exit(2);
        }
        SplittableRandom random =
                args.length == 2 ? new SplittableRandom(Long.parseLong(args[1])) : new SplittableRandom();
        long hits = 0;
        for (long i = 0; i < samples; i++) {
            double x = random.nextDouble();
            double y = random.nextDouble();
            if (x * x + y * y <= 1.0) {
                hits++;
            }
        }
        System.out.println(hits + " " + samples);
    }
}
