/* Which browsers' requests the server takes. A browser lets any web page open a websocket to
 * 127.0.0.1 (no CORS for websockets) and send requests there, so a page the user merely visits
 * could ask about the cameras, or `open` a gst: pipeline that writes files, on a server that has
 * no token (the default, on loopback). Browsers always send Origin with a websocket handshake and
 * with cross-site requests: a request is taken when it has no Origin (svlm ask, scripts, curl),
 * when its Origin is the server's own page (the same host and port as the Host header), or when
 * the Origin is one of allowed_origins. Without a token the Host header must also name loopback:
 * a site whose name the attacker points at 127.0.0.1 (DNS rebinding) is the same origin as
 * itself but not loopback. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "pipeline/server/server_internal.h"

/* A header's value into buf; 0 when absent (or too long to be one this server would accept). */
static int header(struct lws *wsi, enum lws_token_indexes h, char *buf, int cap) {
    const int n = lws_hdr_total_length(wsi, h);
    if (n <= 0) return 0;
    if (n >= cap) return -1;
    return lws_hdr_copy(wsi, buf, cap, h) > 0 ? 1 : -1;
}

/* host[:port] of an origin ("http://HOST:PORT", any path dropped); the whole value without "://" */
static void authority_of(const char *origin, char *out, size_t cap) {
    const char *a = strstr(origin, "://");
    a = a ? a + 3 : origin;
    snprintf(out, cap, "%.*s", (int)strcspn(a, "/?#"), a);
}

/* Whether host[:port] names loopback: "localhost", 127.x.y.z or [::1], with or without a port. */
static int authority_is_loopback(const char *auth) {
    if (strchr(auth, ',')) return 0; /* several Host headers, joined */
    char host[1024];
    if (auth[0] == '[') {
        snprintf(host, sizeof host, "%.*s", (int)strcspn(auth, "]") + 1, auth);
    } else {
        snprintf(host, sizeof host, "%.*s", (int)strcspn(auth, ":"), auth);
    }
    return svlm_host_is_loopback(host);
}

/* Whether origin is in the comma-separated list ("*": any). */
static int listed(const char *list, const char *origin) {
    for (const char *p = list; *p;) {
        p += strspn(p, " ,");
        const size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && p[m - 1] == ' ')
            m--;
        if (m == 1 && *p == '*') return 1;
        if (m && strlen(origin) == m && !strncasecmp(p, origin, m)) return 1;
        p += n;
    }
    return 0;
}

const char *srv_origin_refusal(const svlm_server *srv, struct lws *wsi, char *cors, size_t cap) {
    char origin[1024], host[1024];
    if (cors) cors[0] = 0;
    const int has_origin = header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof origin);
    const int has_host = header(wsi, WSI_TOKEN_HOST, host, sizeof host);
    if (has_origin < 0 || has_host < 0) return "an Origin or Host header too long";
    if (!srv->cfg.token[0] && has_host && !authority_is_loopback(host))
        return "this server has no token and answers only requests addressed to loopback (127.0.0.1 or "
               "localhost): a Host header naming another host is how a web page reaches it by DNS "
               "rebinding; give the server a token (--token-file) to serve other names";
    /* another site's <img> or <script> carries no Origin, but the browser says where it comes
     * from (a snapshot's load told the page whether a stream exists); following a link is fine */
    char fetch_site[32], fetch_mode[32];
    if (!has_origin && lws_hdr_custom_copy(wsi, fetch_site, sizeof fetch_site, "sec-fetch-site:", 15) > 0 &&
        (!strcasecmp(fetch_site, "cross-site") || !strcasecmp(fetch_site, "same-site")) &&
        !(lws_hdr_custom_copy(wsi, fetch_mode, sizeof fetch_mode, "sec-fetch-mode:", 15) > 0 &&
          !strcasecmp(fetch_mode, "navigate")))
        return "a web page from another site may not use this server (Sec-Fetch-Site: cross-site)";
    if (!has_origin) return NULL;
    char auth[1024];
    authority_of(origin, auth, sizeof auth);
    if (has_host && !strcasecmp(auth, host)) return NULL; /* svlm's own page: no CORS needed */
    if (listed(srv->cfg.allowed_origins, origin)) {
        if (cors && strlen(origin) < cap) memcpy(cors, origin, strlen(origin) + 1);
        return NULL;
    }
    return "a web page from another site (its Origin header) may not use this server: a page you "
           "visit could otherwise ask about your cameras; allow it with --allow-origin ORIGIN";
}
