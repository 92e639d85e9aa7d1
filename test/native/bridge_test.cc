/* The bridge target (targets/bridge/bridge.cc) on the engine and the fake kernel: the descriptors it posts
 * to JavaScript, and what it makes of JavaScript's completions (its on_remote): a result, or a route to a
 * fixed file served on the lease. */
#include <errno.h>
#include <string.h>

#include "../../targets/bridge/records.h"
#include "harness.h"

enum { R = UBLK_IO_OP_READ, W = UBLK_IO_OP_WRITE, FLUSH = UBLK_IO_OP_FLUSH };
static const uint16_t DEPTH = 4;
static const uint32_t MAX_IO = 1 << 16;

/* A started queue on the bridge, with what src/bridge.ts gives it: a channel (the batches it posts are
 * kept) and a buffer per tag. routes: its TypeScript target may route. */
struct bridge_rig : harness {
	std::vector<std::vector<uint8_t>> posted;
	std::vector<std::vector<uint8_t>> tag_bufs;
	struct host_channel channel;

	bridge_rig(enum data_mode mode, int routes)
	    : harness(mode, DEPTH, MAX_IO, target_find("bridge")), tag_bufs(DEPTH, std::vector<uint8_t>(MAX_IO))
	{
		dev.user_copy = true;
		dev.tgt.cfg.nums["routes"] = routes;
		channel = {[](void *ctx, std::vector<uint8_t> &&bytes) { static_cast<bridge_rig *>(ctx)->posted.push_back(std::move(bytes)); }, this};
		dev.tgt.cfg.js = &channel;
		for (std::vector<uint8_t> &b : tag_bufs)
			dev.tgt.cfg.bufs.push_back(b.data());
		CHECK_EQ(dev.tgt.ops->init(&dev.tgt), 0);
		start();
	}
	~bridge_rig() { CHECK(stop()); }

	/* The one descriptor of the last batch posted. */
	struct bridge_desc last()
	{
		struct bridge_desc d = {};
		CHECK(!posted.empty() && posted.back().size() == sizeof(d));
		if (!posted.empty() && posted.back().size() == sizeof(d))
			memcpy(&d, posted.back().data(), sizeof(d));
		return d;
	}
	/* JavaScript's completion of tag's request, as bridge_napi.cc hands it over, and the queue takes it. */
	void reply(uint16_t tag, int32_t result, uint8_t file = 0, uint64_t file_off = 0)
	{
		struct remote_completion c = {tag, q.ios[tag].req.gen, result, {}};
		c.arg[BRIDGE_ARG_FILE] = file;
		c.arg[BRIDGE_ARG_FILE_OFF] = file_off;
		CHECK_EQ(queue_complete_remote(&q, c), 0);
		wake();
	}
};

TEST(bridge_posts_a_descriptor_per_request_and_commits_javascripts_result)
{
	bridge_rig h(MODE_AUTO_LEASE, 0);
	h.request(1, FLUSH, 0, 0, UBLK_IO_F_FUA);
	CHECK_EQ(h.posted.size(), 1);
	struct bridge_desc d = h.last();
	CHECK_EQ(d.q, 0);
	CHECK_EQ(d.tag, 1);
	CHECK_EQ(d.gen, h.q.ios[1].req.gen);
	CHECK_EQ(d.op_flags, FLUSH | UBLK_IO_F_FUA);
	CHECK(!h.committed(1));
	h.reply(1, -ENOSPC);
	CHECK_EQ(h.result(1), -ENOSPC);
}

TEST(bridge_serves_a_routed_read_as_one_member_on_the_lease_though_it_had_taken_a_copy)
{
	bridge_rig h(MODE_AUTO_LEASE, 1);
	h.request(2, R, 4096, 8192);
	struct bridge_desc d = h.last();
	CHECK_EQ(d.tag, 2);
	CHECK_EQ(d.op_flags, R);
	CHECK_EQ(d.len, 8192);
	CHECK_EQ(d.offset, 4096);
	CHECK(h.q.ios[2].req.copy); /* a read goes to JavaScript in the tag's buffer */
	h.reply(2, 0, 1, 12345);
	struct io_uring_sqe s = h.take(UD_MEMBER, 2, 0);
	CHECK_RW(s, IORING_OP_READ_FIXED, 1, 0, 8192, 12345);
	h.answer(s, 8192);
	CHECK_EQ(h.result(2), 8192); /* no user copy of the buffer (it would fail: there is no /dev/ublkcN) */
}

TEST(bridge_routes_a_write_without_its_bytes_when_its_target_may_route)
{
	bridge_rig h(MODE_AUTO_LEASE, 1);
	h.request(0, W, 0, 4096);
	CHECK_EQ(h.last().op_flags, W); /* no BRIDGE_F_BYTES: nothing was copied in */
	h.reply(0, 0, 2, 512);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(s, IORING_OP_WRITE_FIXED, 2, 0, 4096, 512);
	h.answer(s, 4096);
	CHECK_EQ(h.result(0), 4096);
}

TEST(bridge_hands_a_write_with_its_bytes_when_its_target_cannot_route)
{
	bridge_rig h(MODE_COPY, 0);
	h.request(3, W, 0, 4096);
	CHECK_EQ(h.last().op_flags, W | BRIDGE_F_BYTES);
	h.reply(3, 4096);
	CHECK_EQ(h.result(3), 4096);
}

TEST(bridge_fails_a_route_for_a_request_that_moves_no_data)
{
	bridge_rig h(MODE_AUTO_LEASE, 1);
	h.request(0, FLUSH, 0, 0);
	h.reply(0, 0, 1, 0);
	CHECK_EQ(h.count(UD_MEMBER), 0);
	CHECK_EQ(h.result(0), -EINVAL);
}
