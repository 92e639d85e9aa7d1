/* nbd_handshake (targets/nbd/handshake.cc) against a scripted server, and nbd_server_from. */
#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>

#include "check.h"
#include "nbd_server.h"

struct hs_result {
	int fd;
	struct export_info ei;
	std::string why;
};

static hs_result handshake(const nbd_script_server &srv, int64_t timeout_s = 5, int cancel = -1)
{
	struct server s;
	std::string why;
	CHECK_EQ(nbd_server_from(srv.config(timeout_s), &s, &why), 0);
	hs_result r{};
	r.fd = nbd_handshake(s, cancel, &r.ei, &r.why);
	return r;
}

static void done(hs_result &r)
{
	if (r.fd >= 0)
		close(r.fd);
}

TEST(nbd_go_negotiates_size_flags_and_block_sizes)
{
	nbd_option seen;
	nbd_script_server srv([&seen](int fd) {
		send_hello(fd, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
		seen.client_flags = (uint32_t)get_be(recv_n(fd, 4), 0, 4);
		nbd_option o = recv_option(fd);
		seen.opt = o.opt;
		seen.data = o.data;
		send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, info_export(1 << 20, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH));
		send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, std::string("\0\x63xxxx", 6)); /* a type we did not ask for */
		send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, info_block(512, 4096, 1 << 20));
		send_reply(fd, NBD_OPT_GO, NBD_REP_ACK, "");
		recv_n(fd, 1); /* until the client closes */
	});
	hs_result r = handshake(srv);
	CHECK(r.fd >= 0);
	CHECK_EQ(r.ei.size, 1 << 20);
	CHECK_EQ(r.ei.flags, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
	CHECK_EQ(r.ei.min_block, 512);
	CHECK_EQ(r.ei.pref_block, 4096);
	CHECK_EQ(r.ei.max_payload, 1 << 20);
	CHECK(r.ei.go);
	CHECK(r.fd < 0 || !(fcntl(r.fd, F_GETFL) & O_NONBLOCK)); /* io_uring waits on a blocking socket */
	done(r);
	srv.th.join();
	CHECK_EQ(seen.client_flags, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	CHECK_EQ(seen.opt, NBD_OPT_GO);
	std::string want;
	put_be(want, 4, 4);
	want += "disk";
	put_be(want, 1, 2);
	put_be(want, NBD_INFO_BLOCK_SIZE, 2);
	CHECK(seen.data == want);
}

TEST(nbd_unsupported_go_falls_back_to_export_name)
{
	std::string name;
	nbd_script_server srv([&name](int fd) {
		send_hello(fd, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
		recv_n(fd, 4);
		recv_option(fd);
		send_reply(fd, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "");
		nbd_option o = recv_option(fd);
		if (o.opt == NBD_OPT_EXPORT_NAME)
			name = o.data;
		std::string s;
		put_be(s, 8 << 20, 8);
		put_be(s, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY, 2);
		send_all(fd, s); /* NO_ZEROES: no 124 zero bytes */
		recv_n(fd, 1);
	});
	hs_result r = handshake(srv);
	CHECK(r.fd >= 0);
	CHECK(!r.ei.go);
	CHECK_EQ(r.ei.size, 8 << 20);
	CHECK(r.ei.flags & NBD_FLAG_READ_ONLY);
	CHECK_EQ(r.ei.min_block, 1); /* the protocol's defaults */
	CHECK_EQ(r.ei.max_payload, 32u << 20);
	done(r);
	srv.th.join();
	CHECK(name == "disk");
}

TEST(nbd_export_name_without_no_zeroes_takes_exactly_its_134_bytes)
{
	nbd_script_server srv([](int fd) {
		send_hello(fd, 0); /* plain newstyle: no options but the export name */
		recv_n(fd, 4);
		recv_option(fd);
		std::string s;
		put_be(s, 1 << 20, 8);
		put_be(s, NBD_FLAG_HAS_FLAGS, 2);
		s += std::string(124, '\0');
		s += "X"; /* the first byte of the transmission phase */
		send_all(fd, s);
		recv_n(fd, 1);
	});
	hs_result r = handshake(srv);
	CHECK(r.fd >= 0);
	CHECK_EQ(r.ei.size, 1 << 20);
	char c = 0;
	CHECK(r.fd >= 0 && recv(r.fd, &c, 1, 0) == 1 && c == 'X');
	done(r);
}

struct refusal {
	const char *name;
	std::function<void(int)> script;
	int err;
	const char *why;
};

static void expect_refusal(const refusal &t)
{
	nbd_script_server srv(t.script);
	hs_result r = handshake(srv);
	if (r.fd != t.err)
		test_fail(__FILE__, __LINE__, std::string(t.name) + ": returned " + std::to_string(r.fd) + " (" + r.why + ")");
	CHECK_CONTAINS(r.why, t.why);
	CHECK_CONTAINS(r.why, "unix:" + srv.path + ": "); /* the endpoint, first */
	done(r);
}

static std::function<void(int)> go_answered(std::function<void(int)> answer)
{
	return [answer](int fd) {
		send_hello(fd, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
		recv_n(fd, 4);
		recv_option(fd);
		answer(fd);
		recv_n(fd, 1);
	};
}

TEST(nbd_oldstyle_server_is_refused)
{
	expect_refusal({"oldstyle",
			[](int fd) {
				std::string s;
				put_be(s, NBD_MAGIC, 8);
				put_be(s, NBD_CLISERV_MAGIC, 8);
				put_be(s, 0, 2);
				send_all(fd, s);
			},
			-EPROTONOSUPPORT, "only the oldstyle handshake"});
}

TEST(nbd_a_server_that_is_not_nbd_is_named_by_its_first_bytes)
{
	expect_refusal({"http", [](int fd) { send_all(fd, "HTTP/1.1 400 Bad\r\n\r\n"); }, -EPROTO,
			"its first bytes are \"HTTP/1.1\""});
}

TEST(nbd_unknown_export_is_enoent_with_the_servers_message)
{
	expect_refusal({"unknown", go_answered([](int fd) { send_reply(fd, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, "no such\x01 thing"); }),
			-ENOENT, "no export named \"disk\" on the server: no such  thing"});
}

TEST(nbd_tls_required_is_refused)
{
	expect_refusal({"tls", go_answered([](int fd) { send_reply(fd, NBD_OPT_GO, NBD_REP_ERR_TLS_REQD, ""); }), -EACCES,
			"requires TLS"});
}

TEST(nbd_go_acknowledged_without_export_info_is_a_protocol_error)
{
	expect_refusal({"no-export", go_answered([](int fd) { send_reply(fd, NBD_OPT_GO, NBD_REP_ACK, ""); }), -EPROTO,
			"without NBD_INFO_EXPORT"});
}

TEST(nbd_malformed_export_info_is_a_protocol_error)
{
	expect_refusal({"short-info",
			go_answered([](int fd) {
				std::string bad = info_export(1 << 20, 1);
				bad.pop_back();
				send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, bad);
			}),
			-EPROTO, "a malformed NBD_REP_INFO"});
}

TEST(nbd_a_reply_to_another_option_is_malformed)
{
	expect_refusal({"wrong-option", go_answered([](int fd) { send_reply(fd, NBD_OPT_EXPORT_NAME, NBD_REP_ACK, ""); }),
			-EPROTO, "a malformed answer to NBD_OPT_GO"});
}

TEST(nbd_empty_export_is_refused)
{
	expect_refusal({"empty",
			go_answered([](int fd) {
				send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, info_export(0, 1));
				send_reply(fd, NBD_OPT_GO, NBD_REP_ACK, "");
			}),
			-EINVAL, "export \"disk\" is empty"});
}

TEST(nbd_block_sizes_are_checked)
{
	auto with_blocks = [](uint32_t min, uint32_t pref, uint32_t max) {
		return go_answered([=](int fd) {
			send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, info_export(1 << 20, 1));
			send_reply(fd, NBD_OPT_GO, NBD_REP_INFO, info_block(min, pref, max));
			send_reply(fd, NBD_OPT_GO, NBD_REP_ACK, "");
		});
	};
	expect_refusal({"pref-not-pow2", with_blocks(512, 3000, 1 << 20), -EPROTO, "block sizes are invalid"});
	expect_refusal({"max-below-pref", with_blocks(512, 4096, 2048), -EPROTO, "block sizes are invalid"});
	expect_refusal({"min-too-big", with_blocks(8192, 8192, 1 << 20), -EINVAL, "larger than a ublk logical block"});
}

TEST(nbd_server_closing_on_export_name_means_no_such_export)
{
	expect_refusal({"closed",
			[](int fd) {
				send_hello(fd, 0);
				recv_n(fd, 4);
				recv_option(fd);
			},
			-ENOENT, "no such export?"});
}

TEST(nbd_a_silent_server_times_out_at_the_timeout)
{
	nbd_script_server srv([](int fd) { recv_n(fd, 1); });
	int64_t t0 = now_ms();
	hs_result r = handshake(srv, 1);
	int64_t took = now_ms() - t0;
	CHECK_EQ(r.fd, -ETIMEDOUT);
	CHECK_CONTAINS(r.why, "no answer before its NBD greeting within --timeout");
	CHECK(took >= 900 && took < 3000);
	done(r);
}

TEST(nbd_the_cancel_fd_ends_a_handshake_at_once)
{
	int cancel = eventfd(0, EFD_CLOEXEC);
	nbd_script_server srv([cancel](int fd) {
		uint64_t one = 1;
		(void)!write(cancel, &one, sizeof(one));
		recv_n(fd, 1);
	});
	int64_t t0 = now_ms();
	hs_result r = handshake(srv, 30, cancel);
	CHECK_EQ(r.fd, -ECANCELED);
	CHECK(now_ms() - t0 < 2000);
	done(r);
	close(cancel);
}

TEST(nbd_nothing_listening_names_the_endpoint)
{
	nbd_script_server srv(nullptr, false);
	hs_result r = handshake(srv);
	CHECK(r.fd < 0);
	CHECK_CONTAINS(r.why, "cannot connect to unix:" + srv.path);
	done(r);
}

TEST(nbd_server_options_name_one_endpoint)
{
	struct server s;
	std::string why;
	struct target_config none;
	CHECK_EQ(nbd_server_from(none, &s, &why), -EINVAL);
	CHECK_CONTAINS(why, "needs --host or --socket");

	struct target_config longpath;
	longpath.strs["socket"] = std::string(200, 'a');
	CHECK_EQ(nbd_server_from(longpath, &s, &why), -EINVAL);
	CHECK_CONTAINS(why, "--socket: the path must have 1 to 107 bytes");

	struct server v6;
	struct target_config host;
	host.strs["host"] = "::1";
	host.nums["timeout"] = 0;
	CHECK_EQ(nbd_server_from(host, &v6, &why), 0);
	CHECK(v6.endpoint == "[::1]:10809");
	CHECK(v6.tcp);
	CHECK_EQ(v6.timeout_ms, 1000); /* at least a second */
}
