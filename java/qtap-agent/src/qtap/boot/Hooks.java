package qtap.boot;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SocketChannel;
import java.util.Map;
import java.util.WeakHashMap;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLSocket;

/**
 * Called from the instrumented JSSE methods (on the bootstrap class path, so java.base code can see it).
 * Every call hands one plaintext chunk to the qtap agent over a non-blocking UNIX stream socket, written by
 * the calling thread itself so that a chunk reaches qtap before the thread's next syscall on the TLS socket
 * (its close included). The Java thread never waits: when the socket buffer is full the chunk is dropped
 * and counted, its bytes still advance the stream offset so qtap reports the hole. Any error here disables
 * capture instead of reaching the application.
 */
public final class Hooks {
    static final int KIND_SOCKET = 1, KIND_ENGINE = 2;
    static final int HEADER = 44;
    /** A frame's largest payload: a bigger chunk is sent as several frames. */
    static final int MAX_PAYLOAD = 65536;

    private static volatile boolean enabled;
    private static String path;
    private static SocketChannel channel;
    private static ByteBuffer pending; // the unsent rest of one frame, sent before any other
    private static long nextId = 1;
    private static final Map<Object, long[]> streams = new WeakHashMap<>(); // {id, sent, received}
    private static final ByteBuffer frame = ByteBuffer.allocateDirect(HEADER + MAX_PAYLOAD).order(ByteOrder.LITTLE_ENDIAN);
    public static long framesSent, framesDropped, bytesDropped, errors;

    private Hooks() {}

    public static synchronized void start(String socketPath) throws IOException {
        close();
        path = socketPath;
        connect();
        enabled = true;
    }

    public static synchronized void stop() {
        enabled = false;
        close();
    }

    public static boolean enabled() { return enabled; }

    public static synchronized String stats() {
        return "connected=" + (channel != null) + " sent=" + framesSent + " dropped=" + framesDropped
            + " dropped_bytes=" + bytesDropped + " errors=" + errors;
    }

    private static void connect() throws IOException {
        SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX);
        ch.connect(UnixDomainSocketAddress.of(path));
        ch.configureBlocking(false);
        channel = ch;
        pending = null;
    }

    private static void close() {
        SocketChannel ch = channel;
        channel = null;
        if (ch != null) {
            try { ch.close(); } catch (IOException ignored) { }
        }
    }

    // -- SSLSocket: AppOutputStream.write(byte[], int, int) entry, AppInputStream.read(byte[], int, int) exit
    public static void socketWrite(SSLSocket s, byte[] b, int off, int len) {
        if (!enabled || len <= 0) return;
        try {
            send(s, KIND_SOCKET, 0, s.getLocalPort(), s.getPort(), ByteBuffer.wrap(b, off, len));
        } catch (Throwable t) { fail(); }
    }

    public static void socketRead(SSLSocket s, byte[] b, int off, int n) {
        if (!enabled || n <= 0) return;
        try {
            send(s, KIND_SOCKET, 1, s.getLocalPort(), s.getPort(), ByteBuffer.wrap(b, off, n));
        } catch (Throwable t) { fail(); }
    }

    // -- SSLEngine: positions of the plaintext buffers at entry, then the bytes between them and the exit's
    public static int[] positions(ByteBuffer[] bufs, int off, int len) {
        if (!enabled) return null;
        int[] p = new int[len];
        for (int i = 0; i < len; i++) p[i] = bufs[off + i].position();
        return p;
    }

    public static void engineDone(SSLEngine e, SSLEngineResult r, ByteBuffer[] bufs, int off, int[] start, int dir) {
        if (!enabled || start == null || r == null) return;
        if ((dir == 0 ? r.bytesConsumed() : r.bytesProduced()) <= 0) return;
        try {
            for (int i = 0; i < start.length; i++) {
                ByteBuffer b = bufs[off + i];
                int end = b.position();
                if (end > start[i]) {
                    ByteBuffer d = b.duplicate();
                    d.limit(end).position(start[i]);
                    send(e, KIND_ENGINE, dir, 0, e.getPeerPort(), d);
                }
            }
        } catch (Throwable t) { fail(); }
    }

    private static synchronized void fail() {
        errors++;
        enabled = false;
        close();
    }

    private static synchronized void send(Object key, int kind, int dir, int lport, int rport, ByteBuffer data)
            throws IOException {
        long[] st = streams.get(key);
        if (st == null) {
            st = new long[] {nextId++, 0, 0};
            streams.put(key, st);
        }
        long ts = System.nanoTime();
        while (data.hasRemaining()) {
            int n = Math.min(data.remaining(), MAX_PAYLOAD);
            long offset = st[1 + dir];
            st[1 + dir] += n;
            if (!room()) {
                framesDropped++;
                bytesDropped += n;
                data.position(data.position() + n);
                continue;
            }
            ByteBuffer f = frame;
            f.clear();
            f.putInt(HEADER - 4 + n).put((byte) 1).put((byte) kind).put((byte) dir).put((byte) 0);
            f.putLong(Thread.currentThread().getId()).putLong(ts).putLong(st[0]).putLong(offset);
            f.putShort((short) lport).putShort((short) rport);
            ByteBuffer slice = data.duplicate();
            slice.limit(slice.position() + n);
            f.put(slice);
            data.position(data.position() + n);
            f.flip();
            channel.write(f);
            framesSent++;
            if (f.hasRemaining()) { // the socket took part of it: the rest goes first next time
                pending = ByteBuffer.allocate(f.remaining());
                pending.put(f).flip();
            }
        }
    }

    /** Whether a new frame can be written now: connected, and the rest of an earlier frame is out. */
    private static boolean room() throws IOException {
        if (channel == null) return false;
        if (pending != null) {
            channel.write(pending);
            if (pending.hasRemaining()) return false;
            pending = null;
        }
        return true;
    }
}
