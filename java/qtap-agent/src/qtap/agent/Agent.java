package qtap.agent;

import java.io.File;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.util.Map;
import java.util.Set;
import java.util.jar.JarFile;

/**
 * qtap's JSSE agent, loaded into a running JVM by qtap through the dynamic attach mechanism.
 *
 * Arguments: {@code socket=<path>} starts (or restarts) capture to the qtap agent listening on that UNIX
 * socket; {@code stop} stops it; {@code status} prints nothing and only checks that the agent loads. The
 * instrumented JSSE methods call {@link qtap.boot.Hooks}, which must be on the bootstrap class path because
 * the JSSE lives in java.base.
 */
public final class Agent {
    private static boolean transformed;

    private Agent() {}

    /** The outcome is also left in the system property qtap.agent, which qtap reads back (attach's
     *  "properties" command) to say why a load failed and for `qtap inspect`. */
    public static void agentmain(String args, Instrumentation inst) throws Exception {
        try {
            run(args, inst);
        } catch (Exception e) {
            Throwable c = e.getCause() != null ? e.getCause() : e;
            System.setProperty("qtap.agent", "error: " + c);
            throw e;
        }
    }

    private static void run(String args, Instrumentation inst) throws Exception {
        String a = args == null ? "" : args;
        if (a.equals("stop")) {
            stopHooks();
            System.setProperty("qtap.agent", "stopped");
            return;
        }
        if (!a.startsWith("socket=")) {
            throw new IllegalArgumentException("qtap agent: expected socket=<path> or stop, got " + a);
        }
        synchronized (Agent.class) {
            if (!transformed) {
                install(inst);
                transformed = true;
            }
        }
        Class.forName("qtap.boot.Hooks", true, null).getMethod("start", String.class).invoke(null, a.substring(7));
        System.setProperty("qtap.agent", "capturing to " + a.substring(7));
    }

    private static void stopHooks() throws Exception {
        try {
            Class.forName("qtap.boot.Hooks", true, null).getMethod("stop").invoke(null);
        } catch (ClassNotFoundException never) {
            // never started in this JVM: nothing to stop
        }
    }

    private static void install(Instrumentation inst) throws Exception {
        File jar = new File(Agent.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        inst.appendToBootstrapClassLoaderSearch(new JarFile(jar));
        Class<?> hooks = Class.forName("qtap.boot.Hooks", true, null);
        Module base = Object.class.getModule();
        // Hooks and Transformer are loaded from the bootstrap class path (parents first), this class from the
        // application's: they share no runtime package, so the transformer is reached through public members.
        Module boot = hooks.getModule();
        // java.base code calls Hooks (the bootstrap loader's unnamed module); the transformer uses the
        // JDK's own copy of ASM, which java.base does not export.
        inst.redefineModule(base, Set.of(boot),
            Map.of("jdk.internal.org.objectweb.asm", Set.of(boot), "jdk.internal.org.objectweb.asm.commons",
                Set.of(boot)),
            Map.of(), Set.of(), Map.of());
        ClassFileTransformer t = (ClassFileTransformer) Class.forName("qtap.agent.Transformer", true, null)
            .getConstructor().newInstance();
        inst.addTransformer(t, true);
        try {
            inst.retransformClasses(Class.forName("sun.security.ssl.SSLEngineImpl"),
                Class.forName("sun.security.ssl.SSLSocketImpl$AppInputStream"),
                Class.forName("sun.security.ssl.SSLSocketImpl$AppOutputStream"));
        } finally {
            inst.removeTransformer(t);
        }
        String problem = t.toString();
        if (!problem.isEmpty()) {
            throw new IllegalStateException("qtap agent: " + problem);
        }
    }
}
