/* A scripted NBD server on a unix socket: `accepts` connections one after another (a reconnect is the
 * second), each served to its end by a thread running the test's script. */
#pragma once
#include <endian.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <thread>

#include "../../targets/nbd/nbd.h"

struct nbd_script_server {
	std::string dir, path;
	int lfd = -1;
	std::thread th;

	explicit nbd_script_server(std::function<void(int fd)> script, bool listen_at_all = true, unsigned accepts = 1)
	{
		char tmpl[] = "/tmp/nbd-test-XXXXXX";
		dir = mkdtemp(tmpl);
		path = dir + "/sock";
		if (!listen_at_all)
			return;
		lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un a = {};
		a.sun_family = AF_UNIX;
		strcpy(a.sun_path, path.c_str());
		(void)!bind(lfd, (struct sockaddr *)&a, sizeof(a));
		(void)!listen(lfd, 4);
		struct timeval tv = {5, 0}; /* a connection that never comes, or bytes that never come, end the script */
		setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		th = std::thread([this, script, accepts, tv] {
			for (unsigned i = 0; i < accepts; i++) {
				int fd = accept(lfd, nullptr, nullptr);
				if (fd < 0)
					return;
				setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
				script(fd);
				close(fd);
			}
		});
	}
	~nbd_script_server()
	{
		if (th.joinable())
			th.join();
		if (lfd >= 0)
			close(lfd);
		unlink(path.c_str());
		rmdir(dir.c_str());
	}
	/* What the nbd target reads its options from. */
	struct target_config config(int64_t timeout_s = 5) const
	{
		struct target_config c;
		c.strs["socket"] = path;
		c.strs["export"] = "disk";
		c.nums["timeout"] = timeout_s;
		return c;
	}
};

/* Server-side wire helpers. */
static inline void put_be(std::string &s, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--)
		s += (char)(v >> (8 * i));
}
static inline uint64_t get_be(const std::string &s, size_t at, int bytes)
{
	uint64_t v = 0;
	for (int i = 0; i < bytes && at + i < s.size(); i++)
		v = v << 8 | (uint8_t)s[at + i];
	return v;
}
static inline void send_all(int fd, const std::string &s)
{
	(void)!send(fd, s.data(), s.size(), MSG_NOSIGNAL);
}
/* Exactly n bytes, or fewer at EOF or after the receive timeout. */
static inline std::string recv_n(int fd, size_t n)
{
	std::string s(n, 0);
	size_t got = 0;
	while (got < n) {
		ssize_t r = recv(fd, &s[got], n - got, 0);
		if (r <= 0)
			break;
		got += r;
	}
	s.resize(got);
	return s;
}
static inline void send_hello(int fd, uint16_t flags)
{
	std::string s;
	put_be(s, NBD_MAGIC, 8);
	put_be(s, NBD_OPTS_MAGIC, 8);
	put_be(s, flags, 2);
	send_all(fd, s);
}
struct nbd_option {
	uint32_t opt = 0;
	std::string data;
	uint32_t client_flags = 0;
};
/* The client's option (its 16-byte header and data). */
static inline nbd_option recv_option(int fd)
{
	nbd_option o;
	std::string h = recv_n(fd, 16);
	o.opt = (uint32_t)get_be(h, 8, 4);
	o.data = recv_n(fd, (size_t)get_be(h, 12, 4));
	return o;
}
static inline void send_reply(int fd, uint32_t opt, uint32_t type, const std::string &payload)
{
	std::string s;
	put_be(s, NBD_REP_MAGIC, 8);
	put_be(s, opt, 4);
	put_be(s, type, 4);
	put_be(s, payload.size(), 4);
	send_all(fd, s + payload);
}
static inline std::string info_export(uint64_t size, uint16_t flags)
{
	std::string s;
	put_be(s, NBD_INFO_EXPORT, 2);
	put_be(s, size, 8);
	put_be(s, flags, 2);
	return s;
}
static inline std::string info_block(uint32_t min, uint32_t pref, uint32_t max)
{
	std::string s;
	put_be(s, NBD_INFO_BLOCK_SIZE, 2);
	put_be(s, min, 4);
	put_be(s, pref, 4);
	put_be(s, max, 4);
	return s;
}
/* The fixed-newstyle greeting, the client's flags and its NBD_OPT_GO, answered with an export. */
static inline nbd_option serve_go(int fd, uint64_t size, uint16_t flags)
{
	send_hello(fd, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	uint32_t cf = (uint32_t)get_be(recv_n(fd, 4), 0, 4);
	nbd_option o = recv_option(fd);
	o.client_flags = cf;
	send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, info_export(size, flags));
	send_reply(fd, NBD_OPT_GO, NBD_REP_ACK, "");
	return o;
}
