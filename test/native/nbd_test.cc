/* The nbd target's transmission phase (targets/nbd/wire.cc) on the engine and the fake kernel: the socket is
 * real (a scripted server did the handshake, and the reconnect's), the ring operations on it are the test's to
 * answer. */
#include <errno.h>
#include <poll.h>
#include <sys/mman.h>

#include <chrono>
#include <memory>

#include "harness.h"
#include "nbd_server.h"

enum { OP_RECV = 1, OP_TIMER, OP_EVENT, OP_FUPD }; /* state.h's cookies of the target's own ring operations */

struct nbd_rig {
	/* What the server received after the handshake, until the client hung up (complete once srv is gone). */
	std::shared_ptr<std::string> wire = std::make_shared<std::string>();
	nbd_script_server srv;
	harness h;
	const struct target_ops *ops = target_find("nbd");

	/* With --reconnect, the server takes a second connection (the reconnect) after the first ends. */
	explicit nbd_rig(uint16_t flags, unsigned reconnect = 0, int64_t timeout_s = 5)
		: srv(
			  [wire = wire, flags](int fd) {
				  serve_go(fd, 1 << 20, NBD_FLAG_HAS_FLAGS | flags);
				  for (std::string b; !(b = recv_n(fd, 1)).empty();)
					  *wire += b;
			  },
			  true, reconnect ? 2 : 1),
		  h(MODE_AUTO_LEASE, 4, 1 << 16, target_find("nbd"))
	{
		h.dev.tgt.cfg = srv.config(timeout_s);
		if (reconnect)
			h.dev.tgt.cfg.nums["reconnect"] = reconnect;
		h.dev.tgt.cfg.declared = ops->options;
		/* --send copy (no fixed send in the fake, a unix socket): a WRITE's bytes are copied in through
		 * /dev/ublkcN's data window, which a sparse memfd stands for. */
		h.dev.user_copy = true;
		h.dev.ublkc_fd = memfd_create("ublkc", MFD_CLOEXEC);
		CHECK_EQ(ftruncate(h.dev.ublkc_fd, UBLKSRV_IO_BUF_OFFSET + (1ull << UBLK_QID_OFF)), 0);
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
		close(h.dev.ublkc_fd);
	}
	/* The request header the member SQE sends. */
	static struct nbd_request header(const struct io_uring_sqe &s, unsigned i = 0)
	{
		struct nbd_request r = {};
		if (s.addr) /* else the SQE was missing: a check failed already */
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
	/* The reconnect worker's wake-up read completes once it has connected again (the test reads the eventfd
	 * for the armed read, as the kernel would), and the swap of the new socket into the ring succeeds. */
	void reconnected()
	{
		struct io_uring_sqe ev = h.take(UD_TARGET, OP_EVENT);
		if (!ev.user_data)
			return;
		struct pollfd p = {ev.fd, POLLIN, 0};
		CHECK_EQ(poll(&p, 1, 5000), 1);
		CHECK_EQ(read(ev.fd, (void *)(uintptr_t)ev.addr, ev.len), 8);
		h.answer(ev, 8);
		struct io_uring_sqe swap = h.take(UD_TARGET, OP_FUPD);
		CHECK_EQ(swap.opcode, IORING_OP_FILES_UPDATE);
		h.answer(swap, 1);
		CHECK_CONTAINS(status(), "\"state\":\"connected\"");
	}
	/* tag's READ: its reply and its payload. */
	void read_done(uint16_t tag, uint64_t be_cookie, uint32_t len)
	{
		reply(NBD_SIMPLE_REPLY_MAGIC, 0, be_cookie);
		h.complete(UD_MEMBER, tag, -1, (int32_t)len);
		CHECK_EQ(h.result(tag), (int32_t)len);
	}
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

/* Two 4k reads whose headers went out in one send, which completed: that send. */
static struct io_uring_sqe two_reads_sent(nbd_rig &r)
{
	r.h.arrive(0, UBLK_IO_OP_READ, 0, 4096);
	r.h.arrive(1, UBLK_IO_OP_READ, 4096, 4096);
	r.h.k.run();
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 1, 0);
	r.h.answer(send, send.len);
	return send;
}

TEST(nbd_error_replies_become_errnos)
{
	nbd_rig r(0);
	struct io_uring_sqe send = two_reads_sent(r);
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

TEST(nbd_a_read_payload_arriving_in_two_pieces_is_received_to_its_end_before_the_next_header)
{
	nbd_rig r(0);
	r.h.request(1, UBLK_IO_OP_READ, 0, 8192);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 1, 0);
	r.h.answer(send, send.len);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(send).cookie);
	struct io_uring_sqe payload = r.h.take(UD_MEMBER, 1, 1);
	r.h.answer(payload, 5000);
	struct io_uring_sqe rest = r.h.take(UD_MEMBER, 1, 1);
	CHECK_EQ(rest.opcode, IORING_OP_READ_FIXED);
	CHECK_EQ(rest.addr, 5000);
	CHECK_EQ(rest.len, 8192 - 5000);
	CHECK(!r.h.committed(1));
	CHECK_EQ(r.h.count(UD_TARGET, OP_RECV), 0); /* the stream is mid-payload: no header receive yet */
	r.h.answer(rest, 8192 - 5000);
	CHECK_EQ(r.h.result(1), 8192);
	CHECK_EQ(r.h.count(UD_TARGET, OP_RECV), 1);
}

TEST(nbd_a_write_sends_header_then_payload_on_one_stream_and_a_short_send_is_continued)
{
	nbd_rig r(NBD_FLAG_SEND_FUA);
	r.h.request(2, UBLK_IO_OP_WRITE, 4096, 8192, UBLK_IO_F_FUA);
	struct io_uring_sqe hdr = r.h.take(UD_MEMBER, 2, 0);
	CHECK_EQ(hdr.opcode, IORING_OP_SEND);
	CHECK_EQ(hdr.len, sizeof(struct nbd_request));
	CHECK(hdr.msg_flags & MSG_MORE); /* the payload follows at once */
	struct nbd_request q = nbd_rig::header(hdr);
	CHECK_EQ(be16toh(q.type), NBD_CMD_WRITE);
	CHECK_EQ(be16toh(q.flags), NBD_CMD_FLAG_FUA);
	CHECK_EQ(be64toh(q.offset), 4096);
	CHECK_EQ(be32toh(q.len), 8192);
	CHECK_EQ(r.h.count(UD_MEMBER, 2), 0); /* the payload waits for its header on the stream */
	r.h.answer(hdr, hdr.len);
	struct io_uring_sqe payload = r.h.take(UD_MEMBER, 2, 1);
	CHECK_EQ(payload.opcode, IORING_OP_SEND);
	CHECK_EQ(payload.len, 8192);
	r.h.answer(payload, 3000);
	struct io_uring_sqe rest = r.h.take(UD_MEMBER, 2, 1);
	CHECK_EQ(rest.addr, payload.addr + 3000);
	CHECK_EQ(rest.len, 8192 - 3000);
	r.h.answer(rest, 8192 - 3000);
	CHECK(!r.h.committed(2)); /* sent is not written: the reply says so */
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, q.cookie);
	CHECK_EQ(r.h.result(2), 8192);
}

TEST(nbd_a_second_reply_for_the_same_cookie_drops_the_connection)
{
	nbd_rig r(0);
	struct io_uring_sqe send = two_reads_sent(r);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 1, nbd_rig::header(send, 0).cookie);
	CHECK_EQ(r.h.result(0), -EPERM);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 1, nbd_rig::header(send, 0).cookie);
	CHECK_EQ(r.h.result(1), -EIO); /* the stream cannot be trusted: what it still holds fails */
	CHECK_CONTAINS(r.status(), "a reply for an unknown cookie");
	CHECK_EQ(r.h.count(UD_TARGET, OP_RECV), 0);
}

TEST(nbd_a_failed_send_without_reconnect_fails_what_is_held_and_what_comes_after)
{
	nbd_rig r(0);
	r.h.arrive(0, UBLK_IO_OP_READ, 0, 4096);
	r.h.arrive(1, UBLK_IO_OP_WRITE, 0, 4096);
	r.h.k.run();
	struct io_uring_sqe run = r.h.take(UD_MEMBER, 0, 0); /* the gathered read goes before the write */
	CHECK_EQ(run.len, sizeof(struct nbd_request));
	r.h.answer(run, run.len);
	r.h.complete(UD_MEMBER, 1, 0, -EPIPE);
	CHECK_EQ(r.h.result(0), -EIO);
	r.h.complete(UD_MEMBER, 1, 1, -EPIPE); /* the payload, on the shut socket */
	CHECK_EQ(r.h.result(1), -EIO);
	CHECK_CONTAINS(r.status(), "send: Broken pipe");
	CHECK_CONTAINS(r.status(), "\"state\":\"disconnected\"");
	unsigned sent = r.h.logged(UD_MEMBER);
	r.h.request(2, UBLK_IO_OP_READ, 0, 4096);
	CHECK_EQ(r.h.result(2), -EIO);
	CHECK_EQ(r.h.logged(UD_MEMBER), sent);
}

TEST(nbd_a_request_without_a_reply_past_the_timeout_fails_and_drops_the_connection)
{
	nbd_rig r(0, 0, 1);
	r.h.request(0, UBLK_IO_OP_READ, 0, 4096);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 0, 0);
	r.h.answer(send, send.len);
	r.h.complete(UD_TARGET, OP_TIMER, -1, -ETIME);
	CHECK(!r.h.committed(0)); /* not late yet */
	std::this_thread::sleep_for(std::chrono::milliseconds(1050));
	r.h.complete(UD_TARGET, OP_TIMER, -1, -ETIME);
	CHECK_EQ(r.h.result(0), -EIO);
	CHECK_CONTAINS(r.status(), "no reply within --timeout 1 s");
	CHECK_CONTAINS(r.status(), "\"state\":\"disconnected\"");
}

TEST(nbd_with_reconnect_a_failed_send_holds_its_requests_and_resends_them_in_first_order)
{
	nbd_rig r(NBD_FLAG_SEND_FLUSH, 3);
	r.h.arrive(2, UBLK_IO_OP_READ, 0, 4096);
	r.h.arrive(1, UBLK_IO_OP_READ, 4096, 4096);
	r.h.k.run();
	struct io_uring_sqe run = r.h.take(UD_MEMBER, 1, 0); /* the run is its last request's member */
	CHECK_EQ(run.len, 2 * sizeof(struct nbd_request));
	r.h.answer(run, -EPIPE);
	CHECK(!r.h.committed(1)); /* held for the next connection, not failed */
	CHECK(!r.h.committed(2));
	CHECK_CONTAINS(r.status(), "\"state\":\"reconnecting\"");
	r.h.request(3, UBLK_IO_OP_FLUSH, 0, 0);
	CHECK_EQ(r.h.count(UD_MEMBER), 0); /* no connection to send on: it waits */
	r.h.complete(UD_TARGET, OP_RECV, -1, 0); /* the shut socket's receive ends */
	r.reconnected();
	/* The failed run's ring entries were [0, 2): these take [2, 4), and the ring's end closes that run. */
	struct io_uring_sqe again = r.h.take(UD_MEMBER, 1, 1);
	CHECK_EQ(again.len, 2 * sizeof(struct nbd_request));
	CHECK_EQ(be64toh(nbd_rig::header(again, 0).cookie) & 0xffff, 2);
	CHECK_EQ(be64toh(nbd_rig::header(again, 1).cookie) & 0xffff, 1);
	CHECK_EQ(r.h.count(UD_MEMBER), 0); /* the next run waits for this one on the stream */
	r.h.answer(again, again.len);
	struct io_uring_sqe flush = r.h.take(UD_MEMBER, 3, 0);
	CHECK_EQ(flush.len, sizeof(struct nbd_request));
	CHECK_EQ(be16toh(nbd_rig::header(flush).type), NBD_CMD_FLUSH);
	r.h.answer(flush, flush.len);
	r.read_done(1, nbd_rig::header(again, 1).cookie, 4096);
	r.read_done(2, nbd_rig::header(again, 0).cookie, 4096);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(flush).cookie);
	CHECK_EQ(r.h.result(3), 0); /* no acknowledged write was lost with the connection */
	CHECK_CONTAINS(r.status(), "\"reconnects\":1");
}

TEST(nbd_a_read_payload_received_whole_before_the_connection_was_lost_completes)
{
	nbd_rig r(0, 3);
	r.h.request(0, UBLK_IO_OP_READ, 0, 4096);
	struct io_uring_sqe send = r.h.take(UD_MEMBER, 0, 0);
	r.h.answer(send, send.len);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(send).cookie);
	r.h.request(1, UBLK_IO_OP_WRITE, 0, 4096);
	r.h.complete(UD_MEMBER, 1, 0, -EPIPE);       /* the write's header: the connection is lost */
	r.h.complete(UD_MEMBER, 1, 1, -EPIPE);       /* its payload, on the dead socket */
	r.h.complete(UD_MEMBER, 0, 1, 4096);         /* the read's payload was all in the socket already */
	CHECK_EQ(r.h.result(0), 4096);
	CHECK(!r.h.committed(1));
	r.reconnected();
	struct io_uring_sqe hdr = r.h.take(UD_MEMBER, 1, 2); /* only the write goes again */
	CHECK_EQ(be16toh(nbd_rig::header(hdr).type), NBD_CMD_WRITE);
	CHECK_EQ(r.h.count(UD_MEMBER), 0);
	r.h.answer(hdr, hdr.len);
	r.h.complete(UD_MEMBER, 1, 3, 4096);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(hdr).cookie);
	CHECK_EQ(r.h.result(1), 4096);
}

TEST(nbd_a_flush_after_losing_unflushed_acknowledged_writes_fails_once_and_fua_writes_until_then)
{
	nbd_rig r(NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA, 3);
	r.h.request(0, UBLK_IO_OP_WRITE, 0, 4096);
	struct io_uring_sqe hdr = r.h.take(UD_MEMBER, 0, 0);
	r.h.answer(hdr, hdr.len);
	r.h.complete(UD_MEMBER, 0, 1, 4096);
	r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(hdr).cookie);
	CHECK_EQ(r.h.result(0), 4096); /* acknowledged into a cache no FLUSH has covered yet */
	r.h.complete(UD_TARGET, OP_RECV, -1, 0); /* the server goes away */
	r.reconnected();
	auto one = [&r](uint16_t tag, uint8_t op, uint32_t len, uint32_t flags) {
		r.h.request(tag, op, 0, len, flags);
		struct io_uring_sqe h = r.h.take(UD_MEMBER, tag, 0);
		r.h.answer(h, h.len);
		if (op == UBLK_IO_OP_WRITE)
			r.h.complete(UD_MEMBER, tag, 1, (int32_t)len);
		r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, nbd_rig::header(h).cookie);
		return r.h.result(tag);
	};
	CHECK_EQ(one(1, UBLK_IO_OP_WRITE, 4096, UBLK_IO_F_FUA), -EIO); /* its durability cannot be told apart */
	CHECK_EQ(one(2, UBLK_IO_OP_FLUSH, 0, 0), -EIO);                /* the loss, reported once */
	CHECK_EQ(one(3, UBLK_IO_OP_FLUSH, 0, 0), 0);
	CHECK_EQ(one(1, UBLK_IO_OP_WRITE, 4096, UBLK_IO_F_FUA), 4096);
}

/* An acknowledged write no FLUSH covered, then the handover: by QUIESCE_DEV (the kernel aborts the idle
 * commands of a queue told a handover is coming) or without it (the queue told to hand over). */
static void handover_flushes_first(bool quiesce)
{
	std::shared_ptr<std::string> wire;
	{
		nbd_rig r(NBD_FLAG_SEND_FLUSH);
		wire = r.wire;
		r.h.request(0, UBLK_IO_OP_WRITE, 0, 4096);
		struct io_uring_sqe hdr = r.h.take(UD_MEMBER, 0, 0);
		r.h.answer(hdr, hdr.len);
		r.h.complete(UD_MEMBER, 0, 1, 4096);
		uint64_t cookie = be64toh(nbd_rig::header(hdr).cookie);
		r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, htobe64(cookie));
		CHECK_EQ(r.h.result(0), 4096); /* acknowledged into the server's cache, no FLUSH yet */
		if (quiesce) {
			queue_prepare_handover(&r.h.q);
			r.h.abort_parked();
		} else {
			queue_request_handover(&r.h.q);
			r.h.wake();
		}
		CHECK_EQ(r.h.count(UD_CANCEL), 0); /* the FLUSH is on the socket; the queue waits for its reply */
		/* Its cookie is the queue's salt (the top 16 bits of every cookie) over a tag no slot has. */
		r.reply(NBD_SIMPLE_REPLY_MAGIC, 0, htobe64(0xffff | (cookie & 0xffff000000000000ull)));
		CHECK_EQ(r.h.count(UD_CANCEL), 1); /* out of its loop: teardown cancels what is left */
	}
	/* The write went out through the fake ring: the socket saw the FLUSH, then the disconnect. */
	CHECK_EQ(wire->size(), 2 * sizeof(struct nbd_request));
	CHECK_EQ(get_be(*wire, 6, 2), NBD_CMD_FLUSH);
	CHECK_EQ(get_be(*wire, 28 + 6, 2), NBD_CMD_DISC);
}

TEST(nbd_a_handover_flushes_what_its_connection_acknowledged_before_letting_go)
{
	handover_flushes_first(false);
}

TEST(nbd_a_handover_by_quiesce_flushes_what_its_connection_acknowledged_before_letting_go)
{
	handover_flushes_first(true);
}

TEST(nbd_a_handover_with_nothing_unflushed_lets_go_at_once)
{
	nbd_rig r(NBD_FLAG_SEND_FLUSH);
	r.h.request(0, UBLK_IO_OP_READ, 0, 4096);
	struct io_uring_sqe hdr = r.h.take(UD_MEMBER, 0, 0);
	r.h.answer(hdr, hdr.len);
	r.read_done(0, nbd_rig::header(hdr).cookie, 4096);
	queue_request_handover(&r.h.q);
	r.h.wake();
	CHECK_EQ(r.h.count(UD_CANCEL), 1); /* out of its loop at once */
}
