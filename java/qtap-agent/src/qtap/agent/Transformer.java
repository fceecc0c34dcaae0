package qtap.agent;

import java.lang.instrument.ClassFileTransformer;
import java.security.ProtectionDomain;
import jdk.internal.org.objectweb.asm.ClassReader;
import jdk.internal.org.objectweb.asm.ClassVisitor;
import jdk.internal.org.objectweb.asm.ClassWriter;
import jdk.internal.org.objectweb.asm.MethodVisitor;
import jdk.internal.org.objectweb.asm.Opcodes;
import jdk.internal.org.objectweb.asm.Type;
import jdk.internal.org.objectweb.asm.commons.AdviceAdapter;

/**
 * Adds calls to qtap.boot.Hooks on the plaintext side of the JSSE: what an application writes to and reads
 * from an SSLSocket, and what SSLEngine.wrap consumes and unwrap produces. The added code has no branches,
 * so no stack map frame changes beyond the new locals (COMPUTE_MAXS is enough, and no class is loaded to
 * compute frames while the JDK's own classes are retransformed).
 */
public final class Transformer implements ClassFileTransformer {
    private static final String HOOKS = "qtap/boot/Hooks";
    private static final String SOCKET = "sun/security/ssl/SSLSocketImpl";
    private static final String ENGINE = "sun/security/ssl/SSLEngineImpl";
    private static final String ENGINE_IO =
        "([Ljava/nio/ByteBuffer;II[Ljava/nio/ByteBuffer;II)Ljavax/net/ssl/SSLEngineResult;";

    // A class not loaded yet goes through transform() at its definition too: count classes, not calls.
    private final java.util.Set<String> done = new java.util.HashSet<>();
    private int errors;
    private String lastError = "";

    public Transformer() {}

    /** "" once the three JSSE classes are instrumented, else what went wrong. */
    @Override
    public synchronized String toString() {
        return errors == 0 && done.size() == 3 ? "" : "instrumented " + done.size() + " of 3 JSSE classes, " + errors + " errors "
            + lastError;
    }

    @Override
    public synchronized byte[] transform(Module module, ClassLoader loader, String name, Class<?> cls, ProtectionDomain pd,
                            byte[] bytes) {
        if (name == null || !(name.equals(ENGINE) || name.equals(SOCKET + "$AppInputStream")
                || name.equals(SOCKET + "$AppOutputStream"))) {
            return null;
        }
        try {
            ClassReader r = new ClassReader(bytes);
            ClassWriter w = new ClassWriter(r, ClassWriter.COMPUTE_MAXS);
            int[] hooked = {0};
            r.accept(new ClassVisitor(Opcodes.ASM7, w) {
                @Override
                public MethodVisitor visitMethod(int access, String m, String desc, String sig, String[] exc) {
                    MethodVisitor mv = super.visitMethod(access, m, desc, sig, exc);
                    if (name.endsWith("$AppOutputStream") && m.equals("write") && desc.equals("([BII)V")) {
                        hooked[0]++;
                        return new SocketWrite(mv, access, m, desc, name);
                    }
                    if (name.endsWith("$AppInputStream") && m.equals("read") && desc.equals("([BII)I")) {
                        hooked[0]++;
                        return new SocketRead(mv, access, m, desc, name);
                    }
                    if (name.equals(ENGINE) && desc.equals(ENGINE_IO) && (m.equals("wrap") || m.equals("unwrap"))) {
                        hooked[0]++;
                        return new EngineIo(mv, access, m, desc, m.equals("wrap") ? 0 : 1);
                    }
                    return mv;
                }
            }, ClassReader.EXPAND_FRAMES);
            int want = name.equals(ENGINE) ? 2 : 1;
            if (hooked[0] != want) {
                throw new IllegalStateException(name + ": found " + hooked[0] + " of " + want + " methods");
            }
            done.add(name);
            return w.toByteArray();
        } catch (Throwable t) {
            errors++;
            lastError = t.toString();
            return null;
        }
    }

    /** AppOutputStream.write(b, off, len): Hooks.socketWrite(this$0, b, off, len) on entry. */
    private static final class SocketWrite extends AdviceAdapter {
        private final String owner;

        SocketWrite(MethodVisitor mv, int access, String name, String desc, String owner) {
            super(Opcodes.ASM7, mv, access, name, desc);
            this.owner = owner;
        }

        @Override
        protected void onMethodEnter() {
            loadThis();
            visitFieldInsn(GETFIELD, owner, "this$0", "L" + SOCKET + ";");
            loadArg(0);
            loadArg(1);
            loadArg(2);
            visitMethodInsn(INVOKESTATIC, HOOKS, "socketWrite", "(Ljavax/net/ssl/SSLSocket;[BII)V", false);
        }
    }

    /** AppInputStream.read(b, off, len) returning n: Hooks.socketRead(this$0, b, off, n). */
    private static final class SocketRead extends AdviceAdapter {
        private final String owner;

        SocketRead(MethodVisitor mv, int access, String name, String desc, String owner) {
            super(Opcodes.ASM7, mv, access, name, desc);
            this.owner = owner;
        }

        @Override
        protected void onMethodExit(int opcode) {
            if (opcode != IRETURN) return;
            int n = newLocal(Type.INT_TYPE);
            dup();
            storeLocal(n);
            loadThis();
            visitFieldInsn(GETFIELD, owner, "this$0", "L" + SOCKET + ";");
            loadArg(0);
            loadArg(1);
            loadLocal(n);
            visitMethodInsn(INVOKESTATIC, HOOKS, "socketRead", "(Ljavax/net/ssl/SSLSocket;[BII)V", false);
        }
    }

    /** SSLEngineImpl.wrap/unwrap(srcs, so, sl, dsts, do, dl): plaintext buffers' positions at entry, then
     *  Hooks.engineDone(this, result, bufs, off, positions, dir) at return. */
    private static final class EngineIo extends AdviceAdapter {
        private final int dir;
        private int start;

        EngineIo(MethodVisitor mv, int access, String name, String desc, int dir) {
            super(Opcodes.ASM7, mv, access, name, desc);
            this.dir = dir;
        }

        private void loadBufs() {
            loadArg(dir == 0 ? 0 : 3);
            loadArg(dir == 0 ? 1 : 4);
        }

        @Override
        protected void onMethodEnter() {
            start = newLocal(Type.getType("[I"));
            loadBufs();
            loadArg(dir == 0 ? 2 : 5);
            visitMethodInsn(INVOKESTATIC, HOOKS, "positions", "([Ljava/nio/ByteBuffer;II)[I", false);
            storeLocal(start);
        }

        @Override
        protected void onMethodExit(int opcode) {
            if (opcode != ARETURN) return;
            int r = newLocal(Type.getType("Ljavax/net/ssl/SSLEngineResult;"));
            dup();
            storeLocal(r);
            loadThis();
            loadLocal(r);
            loadBufs();
            loadLocal(start);
            push(dir);
            visitMethodInsn(INVOKESTATIC, HOOKS, "engineDone",
                "(Ljavax/net/ssl/SSLEngine;Ljavax/net/ssl/SSLEngineResult;[Ljava/nio/ByteBuffer;I[II)V", false);
        }
    }
}
