import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsServer;
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.X509TrustManager;

/**
 * The Java peers of tests/integration/test_java.py, started before the qtap agent.
 *   server <keystore.p12> <password>   HttpsServer on a free port: prints "PORT n"; answers every request with
 *                                      "java-server:" + path + ":" + request body
 *   httpclient | apache               prints "READY", then per stdin line "<port> <path> <body>" makes one POST
 *                                      (java.net.http.HttpClient, or Apache HttpClient 5 classic on SSLSocket) and
 *                                      prints "STATUS <code> <response body>"
 */
public final class JavaPeer {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "server": server(args[1], args[2]); break;
            case "httpclient": clientLoop(false); break;
            case "apache": clientLoop(true); break;
            default: throw new IllegalArgumentException(args[0]);
        }
    }

    static void server(String keystore, String password) throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(keystore)) {
            ks.load(in, password.toCharArray());
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, password.toCharArray());
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), null, null);
        HttpsServer s = HttpsServer.create(new InetSocketAddress("127.0.0.1", 0), 50);
        s.setHttpsConfigurator(new HttpsConfigurator(ctx));
        s.createContext("/", ex -> {
            byte[] body = ex.getRequestBody().readAllBytes();
            byte[] out = ("java-server:" + ex.getRequestURI().getPath() + ":" + new String(body, StandardCharsets.UTF_8))
                .getBytes(StandardCharsets.UTF_8);
            ex.getResponseHeaders().add("X-Qtap-Peer", "java");
            ex.sendResponseHeaders(200, out.length);
            ex.getResponseBody().write(out);
            ex.close();
        });
        s.start();
        System.out.println("PORT " + s.getAddress().getPort());
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }

    static SSLContext trustAll() throws Exception {
        TrustManager[] tm = {new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] c, String a) {}
            public void checkServerTrusted(X509Certificate[] c, String a) {}
            public X509Certificate[] getAcceptedIssuers() { return new X509Certificate[0]; }
        }};
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tm, null);
        return ctx;
    }

    static void clientLoop(boolean apache) throws Exception {
        SSLContext ctx = trustAll();
        HttpClient client = apache ? null : HttpClient.newBuilder().sslContext(ctx).version(HttpClient.Version.HTTP_1_1).build();
        Object apacheClient = apache ? ApachePeer.client(ctx) : null;
        System.out.println("READY");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] p = line.split(" ", 3);
            String url = "https://localhost:" + p[0] + p[1];
            if (p[2].startsWith("bench ")) { // "<port> <path> bench <n>": n requests, for benchmarks/bench_java.py
                int n = Integer.parseInt(p[2].substring(6));
                long t0 = System.nanoTime();
                for (int i = 0; i < n; i++) {
                    String b = "bench-body-" + i;
                    if (apache) {
                        ApachePeer.post(apacheClient, url, b);
                    } else {
                        client.send(HttpRequest.newBuilder(URI.create(url)).POST(HttpRequest.BodyPublishers.ofString(b))
                            .build(), HttpResponse.BodyHandlers.ofString());
                    }
                }
                System.out.println("DONE " + (System.nanoTime() - t0));
                System.out.flush();
                continue;
            }
            String result;
            if (apache) {
                result = ApachePeer.post(apacheClient, url, p[2]);
            } else {
                HttpRequest req = HttpRequest.newBuilder(URI.create(url)).header("X-Qtap-Test", "httpclient")
                    .POST(HttpRequest.BodyPublishers.ofString(p[2])).build();
                HttpResponse<String> r = client.send(req, HttpResponse.BodyHandlers.ofString());
                result = r.statusCode() + " " + r.body();
            }
            System.out.println("STATUS " + result);
            System.out.flush();
        }
    }
}
