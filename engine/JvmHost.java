import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.jar.Attributes;
import java.util.jar.JarFile;
import java.util.jar.Manifest;

/**
 * The warm JVM host of realtime-batch: runs staged jars' {@code main(String[])} one call at a
 * time, in this one JVM, for the Python side in {@code realtime_batch.engine.jvm_host}.
 *
 * <p>Usage: {@code java -cp jvmhost.jar JvmHost REQUEST_FD REPLY_FD OUTPUT_LIMIT PARENT_PID}.
 * Requests and replies travel on the two inherited pipe descriptors (opened through
 * {@code /dev/fd}), never on standard output, so nothing a jar writes can corrupt them. A frame
 * is {@code MAGIC, count, (length, UTF-8 bytes) * count}, big-endian ints.
 *
 * <p>Once started, the host writes {@code ready}. Request: {@code call, jar path, cache key,
 * isolate (0/1), args...}. Reply: {@code status,
 * stdout, stderr, detail} with status {@code ok}, {@code error} (detail: the stack trace),
 * {@code bad-jar} (detail: why the jar cannot be run) or {@code exit} (the call ran
 * {@code System.exit}: written by a shutdown hook; the exit status is the process's).
 *
 * <p>Each jar gets its own class loader (parent: the platform loader, so jars see neither this
 * host nor each other), kept while the jar's cache key (path, mtime, size, inode) is unchanged:
 * static state survives between calls. A call with isolate=1, or a jar whose manifest says
 * {@code Rtbatch-Isolate: true}, gets a fresh loader that is closed after the call.
 */
public final class JvmHost {
    private static final int MAGIC = 0x52544a48; // "RTJH"
    private static final int MAX_STRINGS = 1 << 16;
    private static final int MAX_STRING_BYTES = 64 << 20;
    private static final String ISOLATE_ATTRIBUTE = "Rtbatch-Isolate";

    private final DataInputStream requests;
    private final DataOutputStream replies;
    private final Capture stdout;
    private final Capture stderr;
    private final PrintStream out;
    private final PrintStream err;
    private final ByteArrayInputStream noInput = new ByteArrayInputStream(new byte[0]);
    private final Map<String, Loaded> jars = new HashMap<>();
    private final Object replyLock = new Object();
    private boolean callActive;

    /** A jar's main method and its class loader (kept unless the jar isolates). */
    private static final class Loaded {
        final String key;
        final URLClassLoader loader;
        final Method main;
        final boolean isolate;

        Loaded(String key, URLClassLoader loader, Method main, boolean isolate) {
            this.key = key;
            this.loader = loader;
            this.main = main;
            this.isolate = isolate;
        }
    }

    /** A bounded capture of System.out or System.err: keeps the first LIMIT bytes of a call. */
    private static final class Capture extends OutputStream {
        private final int limit;
        private final ByteArrayOutputStream kept = new ByteArrayOutputStream();
        private long dropped;

        Capture(int limit) {
            this.limit = limit;
        }

        @Override
        public synchronized void write(int b) {
            if (kept.size() < limit) {
                kept.write(b);
            } else {
                dropped++;
            }
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            int room = Math.max(0, Math.min(limit - kept.size(), len));
            kept.write(b, off, room);
            dropped += len - room;
        }

        /** The text captured since the last take (with a marker when cut), and a reset. */
        synchronized String take() {
            String text = new String(kept.toByteArray(), StandardCharsets.UTF_8);
            if (dropped > 0) {
                text += "\n[... " + dropped + " bytes dropped]\n";
            }
            kept.reset();
            dropped = 0;
            return text;
        }
    }

    private JvmHost(DataInputStream requests, DataOutputStream replies, int limit)
            throws IOException {
        this.requests = requests;
        this.replies = replies;
        this.stdout = new Capture(limit);
        this.stderr = new Capture(limit);
        this.out = new PrintStream(stdout, true, "UTF-8");
        this.err = new PrintStream(stderr, true, "UTF-8");
    }

    /** Point System.in/out/err at this host's streams (again: a jar may have replaced them). */
    private void claimStandardStreams() {
        System.setIn(noInput);
        System.setOut(out);
        System.setErr(err);
    }

    public static void main(String[] argv) throws Exception {
        if (argv.length != 4) {
            System.err.println("usage: JvmHost REQUEST_FD REPLY_FD OUTPUT_LIMIT PARENT_PID");
            System.exit(2);
        }
        DataInputStream requests = new DataInputStream(
                new java.io.BufferedInputStream(new FileInputStream("/dev/fd/" + argv[0])));
        DataOutputStream replies = new DataOutputStream(
                new java.io.BufferedOutputStream(new FileOutputStream("/dev/fd/" + argv[1])));
        JvmHost host = new JvmHost(requests, replies, Integer.parseInt(argv[2]));
        watchParent(Long.parseLong(argv[3]));
        host.serve();
    }

    /** Halt when the Python worker that started this host is gone (belt and braces). */
    private static void watchParent(long parentPid) {
        Thread watcher = new Thread(() -> {
            while (true) {
                long now = ProcessHandle.current().parent().map(ProcessHandle::pid).orElse(-1L);
                if (now != parentPid) {
                    Runtime.getRuntime().halt(137);
                }
                try {
                    Thread.sleep(500);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }, "rtbatch-parent-watch");
        watcher.setDaemon(true);
        watcher.start();
    }

    private void serve() throws IOException {
        claimStandardStreams();
        Runtime.getRuntime().addShutdownHook(new Thread(this::replyExit, "rtbatch-exit-reply"));
        writeFrame("ready");
        while (true) {
            List<String> request;
            try {
                request = readFrame();
            } catch (EOFException e) {
                break; // the worker closed the pipe: stop
            }
            if (request.size() < 4 || !"call".equals(request.get(0))) {
                throw new IOException("malformed request");
            }
            call(request);
        }
        System.exit(0);
    }

    private void call(List<String> request) throws IOException {
        String jar = request.get(1);
        String key = request.get(2);
        boolean isolate = "1".equals(request.get(3));
        String[] args = request.subList(4, request.size()).toArray(new String[0]);
        claimStandardStreams();
        stdout.take(); // drop what threads of earlier calls wrote in between
        stderr.take();
        synchronized (replyLock) {
            callActive = true;
        }
        String status = "ok";
        String detail = "";
        Loaded loaded = null;
        Thread self = Thread.currentThread();
        ClassLoader previous = self.getContextClassLoader();
        try {
            loaded = load(jar, key, isolate);
            self.setContextClassLoader(loaded.loader);
            loaded.main.invoke(null, (Object) args);
        } catch (InvocationTargetException e) {
            status = "error";
            detail = trace(e.getCause());
        } catch (BadJar e) {
            status = "bad-jar";
            detail = e.getMessage();
        } catch (Throwable e) {
            status = "error";
            detail = trace(e);
        } finally {
            self.setContextClassLoader(previous);
            out.flush();
            err.flush();
            if (loaded != null && (isolate || loaded.isolate)) {
                loaded.loader.close();
            }
        }
        synchronized (replyLock) {
            if (callActive) {
                callActive = false;
                writeFrame(status, stdout.take(), stderr.take(), detail);
            }
        }
    }

    /** Shutdown hook: a call ran System.exit, so answer it with what it printed. */
    private void replyExit() {
        synchronized (replyLock) {
            if (!callActive) {
                return;
            }
            callActive = false;
            out.flush();
            err.flush();
            try {
                writeFrame("exit", stdout.take(), stderr.take(), "");
            } catch (IOException e) {
                // the worker is gone; nothing to answer
            }
        }
    }

    /** Why a jar cannot be run (no Main-Class, no main method): not the task's exception. */
    private static final class BadJar extends Exception {
        BadJar(String message) {
            super(message);
        }
    }

    private Loaded load(String jar, String key, boolean isolate) throws Exception {
        Loaded cached = jars.get(jar);
        if (cached != null && cached.key.equals(key) && !isolate) {
            return cached;
        }
        if (cached != null && !cached.key.equals(key)) {
            jars.remove(jar);
            cached.loader.close();
        }
        String mainName;
        boolean jarIsolates;
        try (JarFile file = new JarFile(jar)) {
            Manifest manifest = file.getManifest();
            Attributes main = manifest == null ? null : manifest.getMainAttributes();
            mainName = main == null ? null : main.getValue(Attributes.Name.MAIN_CLASS);
            jarIsolates = main != null && "true".equalsIgnoreCase(main.getValue(ISOLATE_ATTRIBUTE));
        } catch (IOException e) {
            throw new BadJar("cannot read the jar: " + e);
        }
        if (mainName == null || mainName.isBlank()) {
            throw new BadJar("the jar's manifest names no Main-Class");
        }
        URLClassLoader loader = new URLClassLoader(
                new URL[] {new File(jar).toURI().toURL()}, ClassLoader.getPlatformClassLoader());
        Method method;
        try {
            Class<?> cls = Class.forName(mainName.trim(), false, loader);
            method = cls.getMethod("main", String[].class);
            if (!Modifier.isStatic(method.getModifiers())) {
                throw new NoSuchMethodException("main is not static");
            }
            method.setAccessible(true);
        } catch (ClassNotFoundException | NoSuchMethodException | LinkageError e) {
            loader.close();
            throw new BadJar("Main-Class " + mainName + " has no usable"
                    + " public static void main(String[]): " + e);
        }
        Loaded fresh = new Loaded(key, loader, method, jarIsolates);
        if (!isolate && !jarIsolates) {
            jars.put(jar, fresh);
        }
        return fresh;
    }

    /** The stack trace, without the host's own reflective frames below the jar's main. */
    private static String trace(Throwable t) {
        StackTraceElement[] frames = t.getStackTrace();
        for (int i = 0; i < frames.length; i++) {
            String cls = frames[i].getClassName();
            if (cls.startsWith("jdk.internal.reflect.") || cls.equals("java.lang.reflect.Method")) {
                t.setStackTrace(Arrays.copyOf(frames, i));
                break;
            }
        }
        StringWriter text = new StringWriter();
        t.printStackTrace(new PrintWriter(text));
        return text.toString();
    }

    private List<String> readFrame() throws IOException {
        int magic = requests.readInt();
        int count = requests.readInt();
        if (magic != MAGIC || count < 0 || count > MAX_STRINGS) {
            throw new IOException("malformed request frame");
        }
        List<String> strings = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            int length = requests.readInt();
            if (length < 0 || length > MAX_STRING_BYTES) {
                throw new IOException("malformed request frame");
            }
            byte[] bytes = new byte[length];
            requests.readFully(bytes);
            strings.add(new String(bytes, StandardCharsets.UTF_8));
        }
        return strings;
    }

    private void writeFrame(String... strings) throws IOException {
        replies.writeInt(MAGIC);
        replies.writeInt(strings.length);
        for (String s : strings) {
            byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
            replies.writeInt(bytes.length);
            replies.write(bytes);
        }
        replies.flush();
    }
}
