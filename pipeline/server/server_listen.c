/* The address the server listens on. libwebsockets takes it as an interface: a numeric IPv4
 * address works, but a name ("localhost") or an address this machine does not have made it defer
 * the listening socket for ever, and svlm said "the page is at ..." with nothing listening. And a
 * failed bind is only a line in its log ("ERROR on binding fd 5 to port 8080 (-1 98)"). So the
 * name is resolved here, and the address bound once as the server will bind it, to say why not. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "pipeline/server/server.h"

/* errno of binding addr as the server does (SO_REUSEADDR); 0 when it binds. */
static int bind_errno(const struct sockaddr *addr, socklen_t len) {
    const int fd = socket(addr->sa_family, SOCK_STREAM, 0);
    if (fd < 0) return errno;
    const int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    const int e = bind(fd, addr, len) ? errno : 0;
    close(fd);
    return e;
}

static const char *bind_hint(int e) {
    switch (e) {
    case EADDRINUSE:
        return ": another program (or another svlm serve) has that port; choose one with --listen HOST:PORT";
    case EADDRNOTAVAIL:
        return ": not an address of this machine (--listen 0.0.0.0:PORT listens on all of them)";
    case EACCES: return ": ports below 1024 need privileges; choose one from 1024 up with --listen HOST:PORT";
    default: return "";
    }
}

svlm_status svlm_server_listen_address(const char *host, int port, char *addr, size_t cap, svlm_err *err) {
    if (!host || !*host) host = "0.0.0.0";
    if (strchr(host, ':'))
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "cannot listen on %s: IPv6 addresses are not supported; use 127.0.0.1 (this machine "
                         "only) or 0.0.0.0 (every IPv4 address)",
                         host);
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    const int g = getaddrinfo(host, service, &hints, &res);
    if (g || !res)
        return svlm_fail(err, SVLM_E_INVALID,
                         "cannot listen on %s: %s (--listen HOST:PORT takes an IPv4 address "
                         "or a name of this machine)",
                         host, g ? gai_strerror(g) : "no IPv4 address");
    const struct sockaddr_in *sin = (const struct sockaddr_in *)res->ai_addr;
    char numeric[INET_ADDRSTRLEN] = "";
    inet_ntop(AF_INET, &sin->sin_addr, numeric, sizeof numeric);
    const int e = bind_errno(res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (e)
        return svlm_fail(err, SVLM_E_IO, "could not listen on %s:%d: %s%s", host, port, strerror(e),
                         bind_hint(e));
    if (strlen(numeric) >= cap)
        return svlm_fail(err, SVLM_E_INVALID, "cannot listen on %s: address too long", host);
    memcpy(addr, numeric, strlen(numeric) + 1);
    return SVLM_OK;
}
