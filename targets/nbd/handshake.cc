/*
 * Reaching an NBD server: the endpoint from the options, a non-blocking connect and the fixed-newstyle
 * handshake (NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE, NBD_OPT_EXPORT_NAME for servers without it). Blocking
 * and bounded by --timeout; it runs on libuv's pool at init and on the reconnect worker, never on a queue
 * thread.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>

#include "nbd.h"

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return be16toh(v);
}
static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return be32toh(v);
}
static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return be64toh(v);
}
static void put16(std::string &s, uint16_t v)
{
	v = htobe16(v);
	s.append((const char *)&v, 2);
}
static void put32(std::string &s, uint32_t v)
{
	v = htobe32(v);
	s.append((const char *)&v, 4);
}
static void put64(std::string &s, uint64_t v)
{
	v = htobe64(v);
	s.append((const char *)&v, 8);
}

/* A server's message, made safe for one line of JSON and a terminal. */
static std::string printable(const uint8_t *p, size_t n)
{
	std::string s;
	for (size_t i = 0; i < n && s.size() < 200; i++)
		s += (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : ' ';
	return s;
}

static bool pow2(uint32_t v)
{
	return v && !(v & (v - 1));
}

/* A socket being negotiated: every wait is bounded by the deadline and broken by the cancel fd. */
struct chan {
	int fd;
	int cancel;
	int64_t deadline;
};

static int chan_wait(struct chan &c, short events)
{
	for (;;) {
		int64_t left = c.deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p[2] = {{c.fd, events, 0}, {c.cancel, POLLIN, 0}};
		int n = poll(p, c.cancel >= 0 ? 2 : 1, (int)std::min<int64_t>(left, INT_MAX));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ETIMEDOUT;
		if (c.cancel >= 0 && p[1].revents)
			return -ECANCELED;
		return 0; /* ready, or an error the next call reports */
	}
}

static int chan_read(struct chan &c, void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = recv(c.fd, (char *)buf + done, len - done, MSG_DONTWAIT);
		if (n > 0) {
			done += n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET; /* the server hung up */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int r = chan_wait(c, POLLIN);
		if (r < 0)
			return r;
	}
	return 0;
}

static int chan_write(struct chan &c, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = send(c.fd, (const char *)buf + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n >= 0) {
			done += n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int r = chan_wait(c, POLLOUT);
		if (r < 0)
			return r;
	}
	return 0;
}

static int connect_one(const struct address &a, struct chan &c)
{
	int fd = socket(a.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)&a.sa, a.len) < 0) {
		if (errno != EINPROGRESS && errno != EINTR) {
			int e = errno;
			close(fd);
			return -e;
		}
		c.fd = fd;
		int r = chan_wait(c, POLLOUT);
		int err = 0;
		socklen_t l = sizeof(err);
		if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
			err = errno;
		if (r == 0)
			r = -err;
		if (r < 0) {
			close(fd);
			return r;
		}
	}
	return fd;
}

static std::string io_failure(const char *what, int r)
{
	if (r == -ECONNRESET)
		return std::string("the server closed the connection ") + what;
	if (r == -ETIMEDOUT)
		return std::string("no answer ") + what + " within --timeout";
	return std::string(what) + ": " + strerror(-r);
}

static int send_option(struct chan &c, uint32_t opt, const std::string &data)
{
	std::string m;
	put64(m, NBD_OPTS_MAGIC);
	put32(m, opt);
	put32(m, (uint32_t)data.size());
	m += data;
	return chan_write(c, m.data(), m.size());
}

/* NBD_OPT_GO with NBD_INFO_BLOCK_SIZE. Returns 0, -EOPNOTSUPP when the server does not know the option
 * (the caller falls back to NBD_OPT_EXPORT_NAME), or -errno with *why. */
static int opt_go(struct chan &c, const std::string &name, struct export_info *ei, std::string *why)
{
	std::string d;
	put32(d, (uint32_t)name.size());
	d += name;
	put16(d, 1);
	put16(d, NBD_INFO_BLOCK_SIZE);
	int r = send_option(c, NBD_OPT_GO, d);
	if (r < 0) {
		*why = io_failure("sending NBD_OPT_GO", r);
		return r;
	}
	bool have_export = false;
	for (;;) {
		uint8_t h[20];
		r = chan_read(c, h, sizeof(h));
		if (r < 0) {
			*why = io_failure("in answer to NBD_OPT_GO", r);
			return r;
		}
		uint32_t type = get32(h + 12), len = get32(h + 16);
		if (get64(h) != NBD_REP_MAGIC || get32(h + 8) != NBD_OPT_GO || len > 65536) {
			*why = "a malformed answer to NBD_OPT_GO";
			return -EPROTO;
		}
		std::vector<uint8_t> p(len);
		r = chan_read(c, p.data(), len);
		if (r < 0) {
			*why = io_failure("in answer to NBD_OPT_GO", r);
			return r;
		}
		if (type == NBD_REP_ACK) {
			if (!have_export) {
				*why = "NBD_OPT_GO succeeded without NBD_INFO_EXPORT";
				return -EPROTO;
			}
			ei->go = true;
			return 0;
		}
		if (type == NBD_REP_INFO) {
			uint16_t it = len >= 2 ? get16(p.data()) : 0xffff;
			if (it == NBD_INFO_EXPORT && len == 12) {
				ei->size = get64(p.data() + 2);
				ei->flags = get16(p.data() + 10);
				have_export = true;
			} else if (it == NBD_INFO_BLOCK_SIZE && len == 14) {
				ei->min_block = get32(p.data() + 2);
				ei->pref_block = get32(p.data() + 6);
				ei->max_payload = get32(p.data() + 10);
			} else if (len < 2 || it == NBD_INFO_EXPORT || it == NBD_INFO_BLOCK_SIZE) {
				*why = "a malformed NBD_REP_INFO";
				return -EPROTO;
			}
			continue; /* information we did not ask for is ignored, as the protocol says */
		}
		std::string msg = len ? ": " + printable(p.data(), len) : "";
		switch (type) {
		case NBD_REP_ERR_UNSUP:
			return -EOPNOTSUPP;
		case NBD_REP_ERR_UNKNOWN:
			*why = "no export named \"" + name + "\" on the server" + msg;
			return -ENOENT;
		case NBD_REP_ERR_TLS_REQD:
			*why = "the server requires TLS, which the nbd target does not speak" + msg;
			return -EACCES;
		case NBD_REP_ERR_POLICY:
			*why = "the server's policy refuses export \"" + name + "\"" + msg;
			return -EACCES;
		case NBD_REP_ERR_SHUTDOWN:
			*why = "the server is shutting down" + msg;
			return -ESHUTDOWN;
		default:
			*why = (type & NBD_REP_FLAG_ERROR ? "the server refused NBD_OPT_GO (error " : "an unexpected reply to NBD_OPT_GO (type ") +
			       std::to_string(type & ~NBD_REP_FLAG_ERROR) + ")" + msg;
			return -EPROTO;
		}
	}
}

static int opt_export_name(struct chan &c, const std::string &name, bool no_zeroes, struct export_info *ei, std::string *why)
{
	int r = send_option(c, NBD_OPT_EXPORT_NAME, name);
	if (r < 0) {
		*why = io_failure("sending NBD_OPT_EXPORT_NAME", r);
		return r;
	}
	uint8_t b[10 + 124];
	r = chan_read(c, b, no_zeroes ? 10 : sizeof(b));
	if (r == -ECONNRESET) {
		/* The only way this option can say no. */
		*why = "the server closed the connection on NBD_OPT_EXPORT_NAME \"" + name + "\" (no such export?)";
		return -ENOENT;
	}
	if (r < 0) {
		*why = io_failure("in answer to NBD_OPT_EXPORT_NAME", r);
		return r;
	}
	ei->size = get64(b);
	ei->flags = get16(b + 8);
	return 0;
}

static int negotiate(struct chan &c, const std::string &name, struct export_info *ei, std::string *why)
{
	uint8_t hello[18];
	int r = chan_read(c, hello, sizeof(hello));
	if (r < 0) {
		*why = io_failure("before its NBD greeting", r);
		return r;
	}
	if (get64(hello) != NBD_MAGIC) {
		*why = "not an NBD server: its first bytes are \"" + printable(hello, 8) + "\", not NBDMAGIC";
		return -EPROTO;
	}
	if (get64(hello + 8) == NBD_CLISERV_MAGIC) {
		*why = "the server speaks only the oldstyle handshake; the nbd target needs newstyle";
		return -EPROTONOSUPPORT;
	}
	if (get64(hello + 8) != NBD_OPTS_MAGIC) {
		*why = "not an NBD server: no IHAVEOPT after NBDMAGIC";
		return -EPROTO;
	}
	uint16_t hflags = get16(hello + 16);
	bool fixed = hflags & NBD_FLAG_FIXED_NEWSTYLE, no_zeroes = hflags & NBD_FLAG_NO_ZEROES;
	std::string cf;
	put32(cf, (fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (no_zeroes ? NBD_FLAG_C_NO_ZEROES : 0));
	r = chan_write(c, cf.data(), cf.size());
	if (r < 0) {
		*why = io_failure("sending the client flags", r);
		return r;
	}
	/* Defaults of the protocol when the server states no size constraints. */
	ei->min_block = 1;
	ei->pref_block = 4096;
	ei->max_payload = 32u << 20;
	if (fixed) {
		r = opt_go(c, name, ei, why);
		if (r != -EOPNOTSUPP)
			return r;
	}
	return opt_export_name(c, name, no_zeroes, ei, why);
}

int nbd_handshake(const struct server &s, int cancel, struct export_info *ei, std::string *why)
{
	struct chan c = {-1, cancel, now_ms() + s.timeout_ms};
	int fd = -EHOSTUNREACH;
	for (const struct address &a : s.addrs) {
		fd = connect_one(a, c);
		if (fd >= 0 || fd == -ECANCELED || fd == -ETIMEDOUT)
			break;
	}
	if (fd < 0) {
		*why = "cannot connect to " + s.endpoint + ": " + strerror(-fd);
		return fd;
	}
	c.fd = fd;
	*ei = {};
	int r = negotiate(c, s.export_name, ei, why);
	if (r == 0 && ei->size == 0) {
		*why = "export \"" + s.export_name + "\" is empty";
		r = -EINVAL;
	}
	if (r == 0 && (!pow2(ei->min_block) || ei->min_block > 65536 || !pow2(ei->pref_block) ||
		       ei->max_payload < ei->pref_block)) {
		*why = "the server's block sizes are invalid (minimum " + std::to_string(ei->min_block) + ", preferred " +
		       std::to_string(ei->pref_block) + ", maximum payload " + std::to_string(ei->max_payload) + ")";
		r = -EPROTO;
	}
	if (r == 0 && ei->min_block > 4096) {
		*why = "the export's minimum block size " + std::to_string(ei->min_block) +
		       " is larger than a ublk logical block can be (4096)";
		r = -EINVAL;
	}
	if (r < 0) {
		if (r != -ECANCELED)
			*why = s.endpoint + ": " + *why;
		close(fd);
		return r;
	}
	/* io_uring waits for a blocking socket; on a non-blocking one a READ_FIXED would fail with EAGAIN. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	if (s.tcp) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	return fd;
}

int nbd_server_from(const struct target_config &cfg, struct server *s, std::string *why)
{
	const std::string *exp = cfg.str("export");
	s->export_name = exp ? *exp : std::string();
	s->timeout_ms = std::max<int64_t>(1, cfg.num("timeout", 30)) * 1000;
	if (const std::string *sock = cfg.str("socket")) {
		struct address a = {};
		auto *un = (struct sockaddr_un *)&a.sa;
		if (sock->empty() || sock->size() >= sizeof(un->sun_path)) {
			*why = "--socket: the path must have 1 to " + std::to_string(sizeof(un->sun_path) - 1) + " bytes";
			return -EINVAL;
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, sock->c_str(), sock->size() + 1);
		a.len = sizeof(*un);
		s->addrs.push_back(a);
		s->endpoint = "unix:" + *sock;
		return 0;
	}
	const std::string *host = cfg.str("host");
	if (!host || host->empty()) {
		*why = "needs --host or --socket";
		return -EINVAL;
	}
	std::string port = std::to_string(cfg.num("port", 10809));
	struct addrinfo hints = {}, *res = nullptr;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(host->c_str(), port.c_str(), &hints, &res);
	if (r != 0) {
		*why = "--host " + (*host) + ": " + gai_strerror(r);
		return -EHOSTUNREACH;
	}
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		struct address a = {};
		memcpy(&a.sa, ai->ai_addr, ai->ai_addrlen);
		a.len = ai->ai_addrlen;
		s->addrs.push_back(a);
	}
	freeaddrinfo(res);
	s->tcp = true;
	bool v6 = host->find(':') != std::string::npos;
	s->endpoint = (v6 ? "[" + (*host) + "]" : (*host)) + ":" + port;
	return 0;
}
