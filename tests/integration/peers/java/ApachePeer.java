import javax.net.ssl.SSLContext;
import org.apache.hc.client5.http.classic.methods.HttpPost;
import org.apache.hc.client5.http.impl.classic.CloseableHttpClient;
import org.apache.hc.client5.http.impl.classic.HttpClients;
import org.apache.hc.client5.http.impl.io.PoolingHttpClientConnectionManagerBuilder;
import org.apache.hc.client5.http.ssl.NoopHostnameVerifier;
import org.apache.hc.client5.http.ssl.SSLConnectionSocketFactoryBuilder;
import org.apache.hc.core5.http.ContentType;
import org.apache.hc.core5.http.io.entity.EntityUtils;
import org.apache.hc.core5.http.io.entity.StringEntity;

/** Apache HttpClient 5 (classic API: blocking I/O on an SSLSocket), kept apart so JavaPeer compiles without it. */
final class ApachePeer {
    static Object client(SSLContext ctx) {
        return HttpClients.custom().setConnectionManager(PoolingHttpClientConnectionManagerBuilder.create()
            .setSSLSocketFactory(SSLConnectionSocketFactoryBuilder.create().setSslContext(ctx)
                .setHostnameVerifier(NoopHostnameVerifier.INSTANCE).build()).build()).build();
    }

    static String post(Object c, String url, String body) throws Exception {
        HttpPost post = new HttpPost(url);
        post.setHeader("X-Qtap-Test", "apache");
        post.setEntity(new StringEntity(body, ContentType.TEXT_PLAIN));
        return ((CloseableHttpClient) c).execute(post, r -> r.getCode() + " " + EntityUtils.toString(r.getEntity()));
    }
}
