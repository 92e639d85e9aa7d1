/* The nbd target's transmission phase (targets/nbd/nbd.cc) on the engine and the fake kernel: the socket is
 * real (a scripted server did the handshake), the ring operations on it are the test's to answer. */
#include <errno.h>

#include <memory>

#include "harness.h"
#include "nbd_server.h"

enum { OP_RECV = 1 }; /* nbd.cc's cookie of its reply receive */

struct nbd_rig {
	/* What the server received after the handshake, until the client hung up (complete once srv is gone). */
	std::shared_ptr<std::string> wire = std::make_shared<std::string>();
	nbd_script_server srv;
	harness h;
	const struct target_ops *ops = target_find("nbd");

	explicit nbd_rig(uint16_t flags)
		: srv([wire = wire, flags](int fd) {
			  serve_go(fd, 1 << 20, NBD_FLAG_HAS_FLAGS | flags);
			  for (std::string b; !(b = recv_n(fd, 1)).empty();)
				  *wire += b;
		  }),
		  h(MODE_AUTO_LEASE, 4, 1 << 16, target_find("nbd"))
	{
		h.dev.tgt.cfg = srv.config();
		h.dev.tgt.cfg.declared = ops->options;
		CHECK_EQ(ops->init(&h.dev.tgt), 0);
		h.start();
	}
	~nbd_rig()
	{
		/* Teardown's cancel reaches the receive and the timer: the queue stops and disconnects. */
		while (h.count(UD_TARGET))
			h.k.post(h.take(UD_TARGET).user_data, -ECANCELED);
		h.k.run();
		CHECK(h.stop());
		ops->deinit(&h.dev.tgt);
	}
	/* The request header the member SQE sends. */
	static struct nbd_request header(const struct io_uring_sqe &s, unsigned i = 0)
	{
		struct nbd_request r;
		memcpy(&r, (const char *)(uintptr_t)s.addr + i * sizeof(r), sizeof(r));
		return r;
	}
	/* The server's simple reply, received into the armed receive. */
	void reply(uint32_t magic, uint32_t error, uint64_t be_cookie, size_t part = sizeof(struct nbd_simple_reply))
	{
		struct io_uring_sqe s = h.take(UD_TARGET, OP_RECV);
		struct nbd_simple_reply r = {htobe32(magic), htobe32(error), be_cookie};
		CHECK(s.len >= part);
		memcpy((void *)(uintptr_t)s.addr, (const char *)&r + (sizeof(r) - s.len), part);
		h.answer(s, (int32_t)part);
	}
	std::string status() const { return ops->status(&h.dev.tgt); }
};

TEST(nbd_read_sends_its_header_then_receives_the_payload_into_the_lease)
{
	nbd_rig r(0);
	r.h.request(1, UBLK_IO_OP_READ, 8192, 4096);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 1, 0);
	CHECK_EQ(send.opcode, IORING_OP_SEND);
	CHECK_EQ(send.len, sizeof(struct nbd_request));
	struct nbd_request q = nbd_rig::header(send);
	CHECK_EQ(be32toh(q.magic), NBD_REQUEST_MAGIC);
	CHECK_EQ(be16toh(q.type), NBD_CMD_READ);
	CHECK_EQ(be64toh(q.offset), 8192);
	CHECK_EQ(be32toh(q.len), 4096);
	CHECK_EQ(be64toh(q.cookie) & 0xffff, 1);
	CHECK_EQ((be64toh(q.cookie) >> 16) & 0xffffffff, r.h.q.ios[1].req.gen);
	r.h.answer(send, sizeof(q));
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, q.cookie);
	struct io_uring_sqe payload = r.h.take(UD_MEMBER, 1, 1);
	CHECK_EQ(payload.opcode, IORING_OP_READ_FIXED);
	CHECK_EQ(payload.addr, 0);
	CHECK_EQ(payload.len, 4096);
	CHECK_EQ(r.h.count(UD_TARGET, OP_RECV), 0); /* the next header only after the payload */
	r.h.answer(payload, 4096);
	CHECK_EQ(r.h.result(1), 4096);
	CHECK_EQ(r.h.count(UD_TARGET, OP_RECV), 1);
}

TEST(nbd_headers_arriving_in_one_batch_go_in_one_send)
{
	nbd_rig r(NBD_FLAG_SEND_FLUSH);
	r.h.arrive(0, UBLK_IO_OP_READ, 0, 4096);
	r.h.arrive(2, UBLK_IO_OP_FLUSH, 0, 0);
	r.h.k.run();
	CHECK_EQ(r.h.count(UD_MEMBER), 1);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 2, 0);
	CHECK_EQ(send.len, 2 * sizeof(struct nbd_request));
	CHECK_EQ(be16toh(nbd_rig::header(send, 0).type), NBD_CMD_READ);
	CHECK_EQ(be16toh(nbd_rig::header(send, 1).type), NBD_CMD_FLUSH);
	CHECK_EQ(be32toh(nbd_rig::header(send, 1).len), 0);
	r.h.answer(send, send.len);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(send, 1).cookie);
	CHECK_EQ(r.h.result(2), 0);
	CHECK(!r.h.committed(0)); /* replies come in any order */
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 1, nbd_rig::header(send, 0).cookie);
	CHECK_EQ(r.h.result(0), -EPERM);
}

TEST(nbd_error_replies_become_errnos)
{
	nbd_rig r(0);
	r.h.arrive(0, UBLK_IO_OP_READ, 0, 4096);
	r.h.arrive(1, UBLK_IO_OP_READ, 4096, 4096);
	r.h.k.run();
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 1, 0);
	r.h.answer(send, send.len);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 28, nbd_rig::header(send, 0).cookie);
	CHECK_EQ(r.h.result(0), -ENOSPC);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 12345, nbd_rig::header(send, 1).cookie);
	CHECK_EQ(r.h.result(1), -EINVAL); /* anything unknown counts as NBD_EINVAL */
	CHECK_EQ(r.h.count(UD_MEMBER), 0);    /* no payload after an error */
}

TEST(nbd_a_reply_header_cut_short_is_received_to_its_end)
{
	nbd_rig r(0);
	r.h.request(0, UBLK_IO_OP_READ, 0, 4096);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 0, 0);
	r.h.answer(send, send.len);
	uint64_t cookie = nbd_rig::header(send).cookie;
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, cookie, 10);
	CHECK_EQ(r.h.count(UD_MEMBER), 0);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, cookie, 6);
	CHECK_EQ(r.h.count(UD_MEMBER, 0), 1);
	r.h.complete(UD_MEMBER, 0, 1, 4096);
	CHECK_EQ(r.h.result(0), 4096);
}

static void expect_connection_lost(uint32_t magic, uint64_t cookie_xor, const char *why)
{
	nbd_rig r(0);
	r.h.request(3, UBLK_IO_OP_READ, 0, 4096);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 3, 0);
	r.h.answer(send, send.len);
	r.reply(magic, 0, nbd_rig::header(send).cookie ^ htobe64(cookie_xor));
	CHECK_EQ(r.h.result(3), -EIO); /* no --reconnect: what it holds fails */
	CHECK_EQ(r.h.count(UD_MEMBER), 0);
	CHECK_CONTAINS(r.status(), why);
	CHECK_CONTAINS(r.status(), "\"state\":\"disconnected\"");
}

TEST(nbd_a_reply_with_a_bad_magic_drops_the_connection)
{
	expect_connection_lost(0x12345678, 0, "a reply with a bad magic");
}

TEST(nbd_a_structured_reply_drops_the_connection)
{
	expect_connection_lost(NBD_STRUCTURED_REPLY_MAGIC, 0, "a structured reply, which was not negotiated");
}

TEST(nbd_a_reply_for_an_unknown_cookie_drops_the_connection)
{
	expect_connection_lost(NBD_SIMPLE_REPLY_MAGIC, 1ull << 16, "a reply for an unknown cookie"); /* another generation */
	expect_connection_lost(NBD_SIMPLE_REPLY_MAGIC, 1ull << 48, "a reply for an unknown cookie"); /* another salt */
}

TEST(nbd_commands_the_export_cannot_carry_fail_without_being_sent)
{
	nbd_rig r(NBD_FLAG_READ_ONLY);
	r.h.request(0, UBLK_IO_OP_FLUSH, 0, 0);
	CHECK_EQ(r.h.result(0), -EIO); /* no SEND_FLUSH: it must not look durable */
	r.h.request(1, UBLK_IO_OP_WRITE, 0, 4096);
	CHECK_EQ(r.h.result(1), -EPERM);
	r.h.request(2, UBLK_IO_OP_DISCARD, 0, 4096);
	CHECK_EQ(r.h.result(2), -EOPNOTSUPP);
	CHECK_EQ(r.h.logged(UD_MEMBER), 0);
}

TEST(nbd_a_drain_releases_what_it_holds_and_disconnects_softly)
{
	std::shared_ptr<std::string> wire;
	{
		nbd_rig r(0);
		wire = r.wire;
		r.h.request(0, UBLK_IO_OP_READ, 0, 4096);
		struct io_uring_sqe send = r.h.take(UD_MEMBER, 0, 0);
		r.h.answer(send, send.len);
		queue_request_drain(&r.h.q);
		r.h.complete(UD_WAKE, -1, -1, 8);
		CHECK_EQ(r.h.result(0), -EIO);
	}
	/* The header went out through the fake ring, so all the socket saw is the disconnect. */
	CHECK_EQ(wire->size(), sizeof(struct nbd_request));
	CHECK_EQ(get_be(*wire, 0, 4), NBD_REQUEST_MAGIC);
	CHECK_EQ(get_be(*wire, 6, 2), NBD_CMD_DISC);
}
