/* device.c: a native "firmware" for fakehub's tests, on Eclipse Paho's synchronous MQTT client
 * (libpaho-mqtt3cs, TLS through OpenSSL) and OpenSSL for the SAS signature.
 *
 * Connects as an Azure IoT Hub device with a SAS token minted from the connection string, sends
 * QoS 1 telemetry, prints C2D messages, answers the direct method `echo`, renews its token by a
 * graceful DISCONNECT + reconnect before expiry, reconnects after a drop with capped exponential
 * backoff and jitter (paho resends unacknowledged QoS 1 messages: CleanSession 0, same handle),
 * and sends DISCONNECT on SIGTERM/SIGINT. `--bug no-token-renewal` keeps the first token forever.
 *
 * Build: cc -Wall -Wextra -O2 -o device device.c -lpaho-mqtt3cs -lssl -lcrypto -lpthread -lm
 * One line per event on stdout: "<ISO time> <event> [details]". Keys and tokens are never printed. */
#define _GNU_SOURCE
#include <MQTTClient.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_TYPE "fakehub-c-device%2F1.0"
#define API_VERSION "2021-04-12"
#define MAX_OUTBOX 256   /* telemetry not yet acknowledged */
#define MAX_INFLIGHT 20  /* handed to paho, PUBACK pending */
#define MAX_REPLIES 16   /* method responses waiting for the main loop */

enum slot_state { FREE, QUEUED, INFLIGHT };
struct slot { enum slot_state state; long seq; MQTTClient_deliveryToken token; };
struct reply { int status; char rid[64]; char *payload; int len; };

static struct {
    char host[256], device[128], key[128], gateway[256], uri[300];
    char c2d_prefix[200], username[512];
    long ttl, margin, keepalive;
    double telemetry;
    int no_renewal;
    const char *ca;
} cfg;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot outbox[MAX_OUTBOX];
static MQTTClient_deliveryToken early_acks[MAX_INFLIGHT]; /* acks that beat publish's return */
static int n_early;
static struct reply replies[MAX_REPLIES];
static int n_replies;
static volatile sig_atomic_t stop_signal;
static volatile int lost;
static int wake_fd[2];

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void say(const char *fmt, ...)
{
    struct timespec ts;
    struct tm tm;
    char stamp[32];
    va_list ap;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    pthread_mutex_lock(&mu);
    printf("%s.%03ldZ ", stamp, ts.tv_nsec / 1000000);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&mu);
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "device: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

static void wake(void)
{
    ssize_t r = write(wake_fd[1], "x", 1);
    (void)r;
}

static void on_signal(int sig)
{
    stop_signal = sig;
    wake();
}

static double env_secs(const char *name, double dflt)
{
    const char *v = getenv(name);
    char *end;
    double d;
    if (!v || !*v)
        return dflt;
    d = strtod(v, &end);
    if (*end || !(d > 0))
        die("%s must be a positive number of seconds", name);
    return d;
}

/* RFC 3986: keep unreserved characters, percent-encode the rest. */
static void url_encode(const char *in, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *in && o + 4 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

/* SharedAccessSignature sr={enc(host/devices/id)}&sig={enc(b64(HMAC-SHA256(key, sr\nse)))}&se={se} */
static int mint_token(long expiry, char *out, size_t cap)
{
    unsigned char key[128], mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char resource[400], sr[1200], to_sign[1300], b64[100], sig[300];
    size_t klen = strlen(cfg.key);
    int key_len;
    if (klen == 0 || klen % 4 || klen > 160)
        return -1;
    key_len = EVP_DecodeBlock(key, (const unsigned char *)cfg.key, (int)klen);
    if (key_len < 0)
        return -1;
    key_len -= (cfg.key[klen - 1] == '=') + (cfg.key[klen - 2] == '='); /* padding */
    snprintf(resource, sizeof resource, "%s/devices/%s", cfg.host, cfg.device);
    url_encode(resource, sr, sizeof sr);
    snprintf(to_sign, sizeof to_sign, "%s\n%ld", sr, expiry);
    if (!HMAC(EVP_sha256(), key, key_len, (unsigned char *)to_sign, strlen(to_sign), mac, &mac_len))
        return -1;
    EVP_EncodeBlock((unsigned char *)b64, mac, (int)mac_len);
    url_encode(b64, sig, sizeof sig);
    snprintf(out, cap, "SharedAccessSignature sr=%s&sig=%s&se=%ld", sr, sig, expiry);
    OPENSSL_cleanse(key, sizeof key);
    return 0;
}

static void parse_connection_string(const char *cs)
{
    char *copy = strdup(cs), *save = NULL, *part, *colon;
    for (part = strtok_r(copy, ";", &save); part; part = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(part, '=');
        if (!eq)
            continue;
        *eq = '\0';
        if (!strcmp(part, "HostName"))
            snprintf(cfg.host, sizeof cfg.host, "%s", eq + 1);
        else if (!strcmp(part, "DeviceId"))
            snprintf(cfg.device, sizeof cfg.device, "%s", eq + 1);
        else if (!strcmp(part, "SharedAccessKey"))
            snprintf(cfg.key, sizeof cfg.key, "%s", eq + 1);
        else if (!strcmp(part, "GatewayHostName"))
            snprintf(cfg.gateway, sizeof cfg.gateway, "%s", eq + 1);
    }
    OPENSSL_cleanse(copy, strlen(cs));
    free(copy);
    if (!*cfg.host || !*cfg.device || !*cfg.key)
        die("FAKEHUB_CONNECTION_STRING needs HostName, DeviceId and SharedAccessKey%s", "");
    if (!*cfg.gateway)
        snprintf(cfg.gateway, sizeof cfg.gateway, "%s", cfg.host);
    colon = strrchr(cfg.gateway, ':'); /* "host:port"; the port is 8883 otherwise */
    if (colon && strchr(cfg.gateway, ':') == colon)
        snprintf(cfg.uri, sizeof cfg.uri, "ssl://%s", cfg.gateway);
    else
        snprintf(cfg.uri, sizeof cfg.uri, "ssl://%s:8883", cfg.gateway);
    snprintf(cfg.username, sizeof cfg.username, "%s/%s/?api-version=%s&DeviceClientType=%s", cfg.host,
             cfg.device, API_VERSION, CLIENT_TYPE);
    snprintf(cfg.c2d_prefix, sizeof cfg.c2d_prefix, "devices/%s/messages/devicebound/", cfg.device);
}

/* ---- paho callbacks (paho's thread) ---- */

static void on_connection_lost(void *ctx, char *cause)
{
    (void)ctx;
    (void)cause; /* MQTT 3.1.1 gives no reason: the socket closed or the keep-alive failed */
    lost = 1;
    wake();
}

static void on_delivered(void *ctx, MQTTClient_deliveryToken token)
{
    long seq = -1;
    int i;
    (void)ctx;
    pthread_mutex_lock(&mu);
    for (i = 0; i < MAX_OUTBOX; i++)
        if (outbox[i].state == INFLIGHT && outbox[i].token == token) {
            seq = outbox[i].seq;
            outbox[i].state = FREE;
            break;
        }
    if (seq < 0 && n_early < MAX_INFLIGHT)
        early_acks[n_early++] = token;
    pthread_mutex_unlock(&mu);
    if (seq >= 0)
        say("acked seq-%ld", seq);
}

static int on_message(void *ctx, char *topic, int topic_len, MQTTClient_message *m)
{
    const char *method = "$iothub/methods/POST/";
    int len = m->payloadlen;
    (void)ctx;
    (void)topic_len;
    if (!strncmp(topic, cfg.c2d_prefix, strlen(cfg.c2d_prefix))) {
        say("c2d props=\"%s\" body=\"%.*s\"", topic + strlen(cfg.c2d_prefix),
            len > 200 ? 200 : len, (char *)m->payload);
    } else if (!strncmp(topic, method, strlen(method))) {
        char name[128] = "", *rid = strstr(topic, "$rid=");
        const char *p = topic + strlen(method);
        size_t n = strcspn(p, "/?");
        int status = 404;
        snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), p);
        if (!strcmp(name, "echo"))
            status = 200;
        say("method name=%s rid=%s status=%d payload=%.*s", name, rid ? rid + 5 : "-", status,
            len > 200 ? 200 : len, (char *)m->payload);
        pthread_mutex_lock(&mu);
        if (rid && n_replies < MAX_REPLIES) {
            struct reply *r = &replies[n_replies++];
            r->status = status;
            snprintf(r->rid, sizeof r->rid, "%.*s", (int)strcspn(rid + 5, "&"), rid + 5);
            r->len = status == 200 ? len : 2;
            r->payload = malloc(r->len + 1);
            memcpy(r->payload, status == 200 ? m->payload : "{}", r->len);
        }
        pthread_mutex_unlock(&mu);
        wake();
    } else {
        say("message topic=\"%s\" (unexpected)", topic);
    }
    MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
    return 1;
}

static int on_tls_error(const char *str, size_t len, void *u)
{
    (void)u;
    say("tls error=\"%.*s\"", (int)(len && str[len - 1] == '\n' ? len - 1 : len), str);
    return 0;
}

/* ---- main loop helpers (main thread) ---- */

static const char *connack_text(int rc)
{
    switch (rc) {
    case 1: return "CONNACK 1 unacceptable protocol version";
    case 2: return "CONNACK 2 identifier rejected";
    case 3: return "CONNACK 3 server unavailable";
    case 4: return "CONNACK 4 bad user name or password";
    case 5: return "CONNACK 5 not authorized";
    default: return "no CONNACK (TCP/TLS failure or timeout)";
    }
}

static int do_connect(MQTTClient c, const char *token, int *session_present)
{
    MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer;
    MQTTClient_SSLOptions ssl = MQTTClient_SSLOptions_initializer;
    ssl.trustStore = cfg.ca;
    ssl.enableServerCertAuth = 1;
    ssl.verify = 1; /* the certificate must name the gateway host */
    ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2;
    ssl.ssl_error_cb = on_tls_error;
    o.ssl = &ssl;
    o.keepAliveInterval = (int)cfg.keepalive;
    o.cleansession = 0;
    o.reliable = 0;
    o.maxInflightMessages = MAX_INFLIGHT;
    o.username = cfg.username;
    o.password = token;
    o.MQTTVersion = MQTTVERSION_3_1_1;
    o.connectTimeout = 30;
    int rc = MQTTClient_connect(c, &o);
    *session_present = o.returned.sessionPresent;
    return rc;
}

/* Hand queued telemetry to paho, oldest first, while it takes more in flight. */
static void flush_outbox(MQTTClient c)
{
    for (;;) {
        int i, best = -1, inflight = 0;
        long seq;
        pthread_mutex_lock(&mu);
        for (i = 0; i < MAX_OUTBOX; i++) {
            if (outbox[i].state == INFLIGHT)
                inflight++;
            else if (outbox[i].state == QUEUED && (best < 0 || outbox[i].seq < outbox[best].seq))
                best = i;
        }
        pthread_mutex_unlock(&mu);
        if (best < 0 || inflight >= MAX_INFLIGHT || lost)
            return;
        seq = outbox[best].seq;
        char topic[400], body[64];
        snprintf(topic, sizeof topic, "devices/%s/messages/events/%%24.mid=seq-%ld&seq=%ld", cfg.device,
                 seq, seq);
        int len = snprintf(body, sizeof body, "{\"seq\": %ld}", seq);
        MQTTClient_deliveryToken token = 0;
        int rc = MQTTClient_publish(c, topic, len, body, 1, 0, &token);
        if (rc != MQTTCLIENT_SUCCESS) {
            say("send failed seq-%ld rc=%d (kept for after the reconnect)", seq, rc);
            return;
        }
        int acked = 0;
        pthread_mutex_lock(&mu);
        for (i = 0; i < n_early; i++)
            if (early_acks[i] == token) {
                early_acks[i] = early_acks[--n_early];
                acked = 1;
                break;
            }
        outbox[best].state = acked ? FREE : INFLIGHT;
        outbox[best].token = token;
        pthread_mutex_unlock(&mu);
        say("sent seq-%ld", seq);
        if (acked)
            say("acked seq-%ld", seq);
    }
}

static void enqueue(long seq)
{
    int i, oldest = 0;
    pthread_mutex_lock(&mu);
    for (i = 0; i < MAX_OUTBOX && outbox[i].state != FREE; i++)
        if (outbox[i].state == QUEUED && outbox[i].seq < outbox[oldest].seq)
            oldest = i;
    if (i == MAX_OUTBOX) { /* full: drop the oldest queued message */
        i = oldest;
        pthread_mutex_unlock(&mu);
        say("dropped seq-%ld (outbox full)", outbox[i].seq);
        pthread_mutex_lock(&mu);
    }
    outbox[i].state = QUEUED;
    outbox[i].seq = seq;
    pthread_mutex_unlock(&mu);
}

static void send_replies(MQTTClient c, int connected)
{
    pthread_mutex_lock(&mu);
    while (n_replies > 0) {
        struct reply r = replies[--n_replies];
        char topic[128];
        pthread_mutex_unlock(&mu);
        snprintf(topic, sizeof topic, "$iothub/methods/res/%d/?$rid=%s", r.status, r.rid);
        if (!connected || MQTTClient_publish(c, topic, r.len, r.payload, 0, 0, NULL) != MQTTCLIENT_SUCCESS)
            say("method response failed rid=%s (not connected)", r.rid);
        free(r.payload);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
}

static double backoff(int attempt) /* 1 s, 2 s, 4 s, ... capped at 60 s; each drawn in [d/2, d] */
{
    double d = fmin(60.0, ldexp(1.0, attempt < 7 ? attempt : 7));
    return d / 2 + d / 2 * ((double)rand() / RAND_MAX);
}

static void wait_until(double deadline)
{
    double left = deadline - now_real();
    struct pollfd p = {.fd = wake_fd[0], .events = POLLIN};
    char buf[64];
    /* short slices: the device's clock may be a virtual one that moves faster than this wait */
    int ms = left <= 0 ? 0 : left > 0.25 ? 250 : (int)(left * 1000) + 1;
    if (poll(&p, 1, ms) > 0)
        while (read(wake_fd[0], buf, sizeof buf) > 0) {
        }
}

int main(int argc, char **argv)
{
    const char *cs = getenv("FAKEHUB_CONNECTION_STRING");
    char token[1600];
    long seq = 0, expiry = 0;
    int attempt = 0, connected = 0, session_present = 0, i;
    double next_send = 0, next_try = 0, connected_at = 0;
    MQTTClient client;
    FILE *ca;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bug") && i + 1 < argc && !strcmp(argv[i + 1], "no-token-renewal")) {
            cfg.no_renewal = 1;
            i++;
        } else {
            die("usage: device [--bug no-token-renewal] (unknown argument %s)", argv[i]);
        }
    }
    if (!cs || !*cs)
        die("FAKEHUB_CONNECTION_STRING is not set%s", "");
    cfg.ca = getenv("FAKEHUB_CA_FILE");
    if (!cfg.ca || !*cfg.ca)
        die("FAKEHUB_CA_FILE is not set%s", "");
    if (!(ca = fopen(cfg.ca, "r")))
        die("cannot read FAKEHUB_CA_FILE %s", cfg.ca);
    fclose(ca);
    parse_connection_string(cs);
    cfg.ttl = (long)env_secs("FAKEHUB_TOKEN_TTL_SECS", 3600);
    cfg.margin = (long)env_secs("FAKEHUB_TOKEN_MARGIN_SECS", 300);
    cfg.keepalive = (long)env_secs("FAKEHUB_KEEPALIVE_SECS", 60);
    cfg.telemetry = env_secs("FAKEHUB_TELEMETRY_SECS", 60);
    if (cfg.margin >= cfg.ttl)
        die("FAKEHUB_TOKEN_MARGIN_SECS must be less than FAKEHUB_TOKEN_TTL_SECS%s", "");

    if (pipe2(wake_fd, O_NONBLOCK | O_CLOEXEC) != 0)
        die("pipe: %s", strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)(getpid() ^ (unsigned)time(NULL)));

    if (MQTTClient_create(&client, cfg.uri, cfg.device, MQTTCLIENT_PERSISTENCE_NONE, NULL) != MQTTCLIENT_SUCCESS)
        die("cannot create an MQTT client for %s", cfg.uri);
    MQTTClient_setCallbacks(client, NULL, on_connection_lost, on_message, on_delivered);
    say("start app=c-paho device=%s host=%s gateway=%s ttl=%lds margin=%lds keepalive=%lds%s", cfg.device,
        cfg.host, cfg.uri + 6, cfg.ttl, cfg.margin, cfg.keepalive,
        cfg.no_renewal ? " bug=no-token-renewal" : "");
    next_send = now_real();

    while (!stop_signal) {
        double now = now_real();
        if (connected && lost) {
            connected = 0;
            if (now - connected_at >= 30)
                attempt = 0; /* back off from scratch only after a connection that held */
            say("disconnected reason=\"connection lost (closed by the peer or keep-alive failed)\"");
            next_try = now + backoff(attempt++);
            say("reconnecting in=%.1fs", next_try - now);
        }
        if (connected && !cfg.no_renewal && now >= expiry - cfg.margin) {
            say("renewing token expiry_in=%lds", expiry - (long)now);
            MQTTClient_disconnect(client, 2000); /* graceful: DISCONNECT, in-flight kept */
            connected = 0;
            say("disconnected reason=\"token renewal\"");
            next_try = now; /* reconnect at once with a new token */
            attempt = 0;
        }
        if (!connected && now >= next_try) {
            int rc;
            if (expiry == 0 || !cfg.no_renewal) {
                expiry = (long)now + cfg.ttl;
                if (mint_token(expiry, token, sizeof token) != 0)
                    die("the SharedAccessKey is not valid base64%s", "");
            }
            lost = 0;
            rc = do_connect(client, token, &session_present);
            if (rc == MQTTCLIENT_SUCCESS) {
                static char methods[] = "$iothub/methods/POST/#";
                char c2d[sizeof cfg.c2d_prefix + 2], *topics[2] = {c2d, methods};
                int qos[] = {1, 0};
                snprintf(c2d, sizeof c2d, "%s#", cfg.c2d_prefix);
                connected = 1;
                connected_at = now_real();
                say("connected session_present=%d token_expiry_in=%lds", session_present,
                    expiry - (long)now_real());
                rc = MQTTClient_subscribeMany(client, 2, topics, qos);
                if (rc != MQTTCLIENT_SUCCESS)
                    say("subscribe failed rc=%d", rc);
            } else {
                say("connect failed rc=%d reason=\"%s\"", rc, connack_text(rc));
                next_try = now_real() + backoff(attempt++);
                say("reconnecting in=%.1fs", next_try - now_real());
            }
        }
        if (now_real() >= next_send) {
            enqueue(++seq);
            if (!connected)
                say("queued seq-%ld (offline)", seq);
            next_send = now_real() + cfg.telemetry;
        }
        if (connected && !lost)
            flush_outbox(client);
        send_replies(client, connected && !lost);
        double deadline = next_send;
        if (!connected && next_try < deadline)
            deadline = next_try;
        if (connected && !cfg.no_renewal && expiry - cfg.margin < deadline)
            deadline = expiry - cfg.margin;
        wait_until(deadline);
    }

    say("stopping signal=%s", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    if (connected && !lost) {
        int rc = MQTTClient_disconnect(client, 2000);
        say("stopped disconnect=%s", rc == MQTTCLIENT_SUCCESS ? "sent" : "failed");
    } else {
        say("stopped disconnect=not-connected");
    }
    MQTTClient_destroy(&client);
    OPENSSL_cleanse(token, sizeof token);
    return 0;
}
