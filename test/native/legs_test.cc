/* stripe (targets/stripe/stripe.cc) and mirror (targets/mirror/mirror.cc) on the engine and the fake kernel,
 * driven through their ops tables: which members and block discards each request becomes, and how their
 * results fold. */
#include <errno.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "harness.h"
#include "../../targets/mirror/mirror.h"

enum { R = UBLK_IO_OP_READ, W = UBLK_IO_OP_WRITE, FLUSH = UBLK_IO_OP_FLUSH, DISCARD = UBLK_IO_OP_DISCARD };
static const off_t LEG_BYTES = 1 << 20;

/* A 1 MiB leg in memory: a mirror reads and writes its metadata there (the fake ring moves no data). */
static int memory_leg()
{
	int fd = memfd_create("leg", 0);
	CHECK(fd >= 0 && ftruncate(fd, LEG_BYTES) == 0);
	return fd;
}

/* The mirror options index.ts passes for legs that start the same. */
static const std::map<std::string, int64_t> MIRROR_CLEAN = {{"assume-clean", 1}, {"bitmap-chunk-shift", 16}, {"lbs", 512}};

/* A started queue on the real target `name` over legs (fixed files 1..n): stripe's are numbers it never
 * uses (the test is the kernel), a mirror's are memory legs (memory_leg) unless given. With the options its
 * index.ts passes. Every case ends with a clean stop. */
struct legs_rig : harness {
	const struct target_ops *ops;
	std::vector<int> mine;
	bool memory_legs = false;
	/* fault_over: the legs' target wrapped in `fault` with these faults (its lists). */
	legs_rig(const char *name, unsigned n, std::map<std::string, int64_t> nums = {}, std::vector<int> fds = {},
		 std::map<std::string, std::vector<int64_t>> fault_over = {})
		: harness(MODE_AUTO_LEASE, 4, 1 << 20, target_find(fault_over.empty() ? name : "fault")),
		  ops(target_find(fault_over.empty() ? name : "fault"))
	{
		bool mirror = std::string(name) == "mirror";
		memory_legs = mirror;
		for (unsigned i = 0; fds.empty() && i < n; i++)
			mine.push_back(mirror ? memory_leg() : 100 + (int)i);
		dev.tgt.cfg.fds = fds.empty() ? mine : fds;
		dev.tgt.cfg.nums = std::move(nums);
		if (!fault_over.empty()) {
			dev.tgt.cfg.strs["over"] = name;
			dev.tgt.cfg.lists = std::move(fault_over);
		}
		if (mirror)
			dev.tgt.cfg.nums.insert(MIRROR_CLEAN.begin(), MIRROR_CLEAN.end());
		CHECK_EQ(ops->init(&dev.tgt), 0);
		start();
	}
	~legs_rig()
	{
		CHECK(stop());
		ops->deinit(&dev.tgt);
		for (int fd : mine)
			if (memory_legs)
				close(fd);
	}
	std::string status() const { return ops->status(&dev.tgt); }
	/* The legs tag's unanswered members are on: bit i for fixed file i + 1. */
	unsigned legs_of(uint16_t tag) const
	{
		unsigned legs = 0;
		for (const struct io_uring_sqe &s : k.pending)
			if (ud_kind_of(s.user_data) == UD_MEMBER && ud_tag(s.user_data) == tag)
				legs |= 1u << (s.fd - 1);
		return legs;
	}
	/* The mirror's bitmap writes (its own ring operations) done on the memory legs, as the kernel would,
	 * until none is left. Returns how many there were. */
	unsigned write_bitmap()
	{
		unsigned n = 0;
		for (auto it = k.pending.begin(); it != k.pending.end();) {
			if (ud_kind_of(it->user_data) != UD_TARGET || it->opcode != IORING_OP_WRITE) {
				++it;
				continue;
			}
			struct io_uring_sqe s = *it;
			k.pending.erase(it);
			answer(s, (int32_t)pwrite(k.files[s.fd], reinterpret_cast<void *>(s.addr), s.len, (off_t)s.off));
			n++;
			it = k.pending.begin();
		}
		return n;
	}
	/* A request, with the bitmap writes it waits for done. */
	void request(uint16_t tag, uint8_t op, uint64_t off, uint32_t len, uint32_t flags = 0)
	{
		harness::request(tag, op, off, len, flags);
		write_bitmap();
	}
	/* Answer each member of tag not answered yet: the one on leg `bad` (a fixed file) with err, the
	 * others as done in full. */
	void answer_members(uint16_t tag, int bad = 0, int32_t err = -EIO)
	{
		for (unsigned n = count(UD_MEMBER, tag); n; n--) {
			struct io_uring_sqe s = take(UD_MEMBER, tag);
			bool transfer = s.opcode == IORING_OP_READ_FIXED || s.opcode == IORING_OP_WRITE_FIXED;
			answer(s, s.fd == bad ? err : transfer ? (int32_t)s.len : 0);
		}
	}
};

/* A fallocate SQE: liburing puts the length in addr and the mode in len. */
#define CHECK_FALLOCATE(s, fd, off, len, mode) CHECK_RW(s, IORING_OP_FALLOCATE, fd, len, mode, off)
static const unsigned PUNCH = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE;

/* A block discard (discard.h) of [off, off + len) on fixed file fd. */
#define CHECK_BLOCK_DISCARD(s, fd, off, len) check_block_discard(__FILE__, __LINE__, s, fd, off, len)
static void check_block_discard(const char *file, int line, const struct io_uring_sqe &s, int fd, uint64_t off, uint64_t len)
{
	if (s.opcode != IORING_OP_URING_CMD || sqe_cmd_op(s) != BLOCK_URING_CMD_DISCARD || s.fd != fd || s.addr != off ||
	    s.addr3 != len)
		test_fail(file, line,
			  "not a block discard of [" + std::to_string(off) + ", +" + std::to_string(len) + ") on file " +
				  std::to_string(fd) + ": op " + std::to_string(s.opcode) + " fd " + std::to_string(s.fd) +
				  " addr " + std::to_string(s.addr) + " len " + std::to_string(s.addr3));
}

/* ---- stripe: pieces ---- */

/* 4 KiB chunks (the smallest index.ts allows), so that small requests cross them. */
static const int64_t CHUNK_SHIFT = 12;
static const uint32_t CHUNK = 1u << CHUNK_SHIFT;

TEST(stripe_a_request_across_chunks_is_one_member_per_piece)
{
	legs_rig h("stripe", 3, {{"chunk-shift", CHUNK_SHIFT}});
	/* [6144, 14336): the second half of chunk 1 (leg 2, row 0), chunk 2 (leg 3, row 0), the first half
	 * of chunk 3 (leg 1, row 1) */
	h.request(1, R, 6144, 8192);
	CHECK_EQ(h.count(UD_MEMBER, 1), 3);
	struct io_uring_sqe a = h.take(UD_MEMBER, 1, 0), b = h.take(UD_MEMBER, 1, 1), c = h.take(UD_MEMBER, 1, 2);
	CHECK_RW(a, IORING_OP_READ_FIXED, 2, 0, 2048, 2048);
	CHECK_RW(b, IORING_OP_READ_FIXED, 3, 2048, CHUNK, 0);
	CHECK_RW(c, IORING_OP_READ_FIXED, 1, 6144, 2048, CHUNK);
	h.answer(c, 2048);
	h.answer(a, 2048);
	CHECK(!h.committed(1));
	h.answer(b, CHUNK);
	CHECK_EQ(h.result(1), 8192);
}

TEST(stripe_a_fua_write_is_a_dsync_write_on_every_piece)
{
	legs_rig h("stripe", 2, {{"chunk-shift", CHUNK_SHIFT}});
	h.request(0, W, CHUNK, 2 * CHUNK, UBLK_IO_F_FUA);
	struct io_uring_sqe a = h.take(UD_MEMBER, 0, 0), b = h.take(UD_MEMBER, 0, 1);
	CHECK_RW(a, IORING_OP_WRITE_FIXED, 2, 0, CHUNK, 0);
	CHECK_RW(b, IORING_OP_WRITE_FIXED, 1, CHUNK, CHUNK, CHUNK);
	CHECK_EQ(a.rw_flags, RWF_DSYNC);
	CHECK_EQ(b.rw_flags, RWF_DSYNC);
	h.answer(a, CHUNK);
	h.answer(b, CHUNK);
	CHECK_EQ(h.result(0), 2 * CHUNK);
}

/* A READ of MAX_MEMBERS + 2 chunks over 2 legs: a member per chunk, and two pieces more than members. */
static const uint32_t LONG_READ = (MAX_MEMBERS + 2) * CHUNK;

TEST(stripe_pieces_past_the_member_limit_reuse_members_that_finished)
{
	legs_rig h("stripe", 2, {{"chunk-shift", CHUNK_SHIFT}});
	h.request(0, R, 0, LONG_READ);
	CHECK_EQ(h.count(UD_MEMBER, 0), MAX_MEMBERS);
	h.complete(UD_MEMBER, 0, 3, CHUNK);
	struct io_uring_sqe p16 = h.take(UD_MEMBER, 0, 3); /* FOLD_RETRY: chunk 16, leg 1, row 8 */
	CHECK_RW(p16, IORING_OP_READ_FIXED, 1, MAX_MEMBERS * CHUNK, CHUNK, 8 * CHUNK);
	h.complete(UD_MEMBER, 0, 0, CHUNK);
	struct io_uring_sqe p17 = h.take(UD_MEMBER, 0, 0); /* chunk 17, leg 2, row 8 */
	CHECK_RW(p17, IORING_OP_READ_FIXED, 2, (MAX_MEMBERS + 1) * CHUNK, CHUNK, 8 * CHUNK);
	h.answer(p16, CHUNK);
	h.answer(p17, CHUNK);
	h.answer_members(0);
	CHECK_EQ(h.result(0), LONG_READ); /* what a reused member covered first counts too */
	CHECK_EQ(h.logged(UD_MEMBER), MAX_MEMBERS + 2);
	CHECK_EQ(h.q.stats->retries.load(), 2);
}

TEST(stripe_a_failed_piece_ends_the_request_without_the_pieces_left)
{
	legs_rig h("stripe", 2, {{"chunk-shift", CHUNK_SHIFT}});
	h.request(0, R, 0, LONG_READ);
	h.complete(UD_MEMBER, 0, 5, -EIO);
	h.answer_members(0);
	CHECK_EQ(h.result(0), -EIO);
	CHECK_EQ(h.logged(UD_MEMBER), MAX_MEMBERS);
	CHECK_EQ(h.q.stats->retries.load(), 0);
}

TEST(stripe_a_flush_goes_to_every_leg)
{
	legs_rig h("stripe", 3, {{"chunk-shift", CHUNK_SHIFT}});
	h.request(2, FLUSH, 0, 0);
	for (unsigned i = 0; i < 3; i++) {
		struct io_uring_sqe s = h.take(UD_MEMBER, 2, i);
		CHECK_EQ(s.opcode, IORING_OP_FSYNC);
		CHECK_EQ(s.fd, 1 + i);
		h.answer(s, 0);
	}
	CHECK_EQ(h.result(2), 0);
}

/* [2048, 18432) over 3 legs: chunks 0 and 3 are rows 0-1 of leg 1 (from 2048 into row 0), chunks 1 and
 * 4 rows 0-1 of leg 2 (up to 2048 into row 1), chunk 2 row 0 of leg 3. */
static const uint64_t SPREAD_OFF = 2048, SPREAD_LEN = 4 * CHUNK;

TEST(stripe_a_discard_is_one_range_per_leg)
{
	legs_rig h("stripe", 3, {{"chunk-shift", CHUNK_SHIFT}});
	h.request(0, DISCARD, SPREAD_OFF, SPREAD_LEN);
	struct io_uring_sqe a = h.take(UD_MEMBER, 0, 0), b = h.take(UD_MEMBER, 0, 1), c = h.take(UD_MEMBER, 0, 2);
	CHECK_FALLOCATE(a, 1, 2048, 2 * CHUNK - 2048, PUNCH);
	CHECK_FALLOCATE(b, 2, 0, CHUNK + 2048, PUNCH);
	CHECK_FALLOCATE(c, 3, 0, CHUNK, PUNCH);
	for (const struct io_uring_sqe &s : {a, b, c})
		h.answer(s, 0);
	CHECK_EQ(h.result(0), 0);
}

TEST(stripe_a_discard_on_a_block_device_leg_is_a_block_discard_of_its_range)
{
	legs_rig h("stripe", 3, {{"chunk-shift", CHUNK_SHIFT}, {"block-discard", 0b010}});
	h.request(0, DISCARD, SPREAD_OFF, SPREAD_LEN);
	CHECK_EQ(h.count(UD_MEMBER, 0), 2);
	struct io_uring_sqe block = h.take(UD_TARGET_REQ, 0, 2);
	CHECK_BLOCK_DISCARD(block, 2, 0, CHUNK + 2048);
	h.answer_members(0);
	CHECK(!h.committed(0)); /* the block discard is still out */
	h.answer(block, 0);
	CHECK_EQ(h.result(0), 0);
}

/* ---- mirror: legs ---- */

TEST(mirror_reads_take_the_legs_in_turn)
{
	legs_rig h("mirror", 2);
	for (uint16_t tag = 0; tag < 3; tag++) {
		h.request(tag, R, 8192 * tag, 4096);
		struct io_uring_sqe s = h.take(UD_MEMBER, tag, 0);
		CHECK_RW(s, IORING_OP_READ_FIXED, 1 + tag % 2, 0, 4096, 8192 * tag);
		CHECK_EQ(h.count(UD_MEMBER, tag), 0); /* one leg per read */
		h.answer(s, 4096);
		CHECK_EQ(h.result(tag), 4096);
	}
}

TEST(mirror_a_failed_read_is_retried_on_the_next_healthy_leg)
{
	legs_rig h("mirror", 3);
	h.request(0, R, 8192, 4096);
	h.answer_members(0, 1);
	CHECK_CONTAINS(h.status(), "\"mirror\":\"degraded\",\"legs\":\"failed,in-sync,in-sync\"");
	CHECK_CONTAINS(h.status(), "\"leg1\":\"failed: read at byte 8192: EIO");
	CHECK_EQ(h.legs_of(0), 0b010);
	h.answer_members(0, 2, -ENODATA);
	struct io_uring_sqe last = h.take(UD_MEMBER, 0, 0); /* the same bytes from the leg left */
	CHECK_RW(last, IORING_OP_READ_FIXED, 3, 0, 4096, 8192);
	h.answer(last, 4096);
	CHECK_EQ(h.result(0), 4096);
	CHECK_EQ(h.q.stats->retries.load(), 2);
}

TEST(mirror_a_leg_ending_inside_a_read_is_failed_and_the_read_retried)
{
	legs_rig h("mirror", 2);
	h.request(0, R, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, 0);
	CHECK_EQ(h.legs_of(0), 0b10);
	CHECK_CONTAINS(h.status(), "\"legs\":\"failed,in-sync\"");
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
}

TEST(mirror_a_write_goes_to_every_leg)
{
	legs_rig h("mirror", 3);
	h.request(1, W, 4096, 8192, UBLK_IO_F_FUA);
	CHECK_EQ(h.count(UD_MEMBER, 1), 3);
	for (unsigned i = 0; i < 3; i++) {
		CHECK(!h.committed(1));
		struct io_uring_sqe s = h.take(UD_MEMBER, 1, i);
		CHECK_RW(s, IORING_OP_WRITE_FIXED, 1 + i, 0, 8192, 4096);
		CHECK_EQ(s.rw_flags, RWF_DSYNC);
		h.answer(s, 8192);
	}
	CHECK_EQ(h.result(1), 8192);
}

/* The bitmap block of a memory leg (the superblock is its last 4 KiB, the one block before it). */
static uint8_t bitmap_byte(int fd, unsigned i)
{
	uint8_t b = 0xee;
	CHECK_EQ(pread(fd, &b, 1, LEG_BYTES - 8192 + i), 1);
	return b;
}

TEST(mirror_a_write_to_a_clean_chunk_waits_until_its_bit_is_on_every_leg)
{
	legs_rig h("mirror", 2);
	h.harness::request(0, W, 3 << 16, 4096);
	h.harness::request(1, W, (3 << 16) + 8192, 4096); /* same chunk, same batch */
	CHECK_EQ(h.count(UD_MEMBER), 0);
	/* One write of the block per leg, both in flight at once, durable before anything relies on them. */
	CHECK_EQ(h.count(UD_TARGET), 2);
	struct io_uring_sqe s1 = h.take(UD_TARGET), s2 = h.take(UD_TARGET);
	CHECK_EQ(s1.rw_flags, RWF_DSYNC);
	CHECK_EQ(s1.off, (uint64_t)LEG_BYTES - 8192);
	CHECK_EQ(s1.fd + s2.fd, 3);
	CHECK_EQ(pwrite(h.k.files[s1.fd], reinterpret_cast<void *>(s1.addr), s1.len, (off_t)s1.off), 4096);
	h.answer(s1, 4096);
	CHECK_EQ(h.count(UD_MEMBER), 0); /* one leg has it: not yet */
	CHECK_EQ(pwrite(h.k.files[s2.fd], reinterpret_cast<void *>(s2.addr), s2.len, (off_t)s2.off), 4096);
	h.answer(s2, 4096);
	CHECK_EQ(bitmap_byte(h.mine[0], 0), 0b1000);
	CHECK_EQ(bitmap_byte(h.mine[1], 0), 0b1000);
	CHECK_EQ(h.legs_of(0), 0b11);
	CHECK_EQ(h.legs_of(1), 0b11);
	/* The chunk's bit is on the legs: the next write to it goes at once. */
	h.harness::request(2, W, 3 << 16, 512);
	CHECK_EQ(h.legs_of(2), 0b11);
	CHECK_EQ(h.count(UD_TARGET), 0);
	for (uint16_t tag = 0; tag < 3; tag++) {
		h.answer_members(tag);
		CHECK_EQ(h.result(tag), tag == 2 ? 512 : 4096);
	}
}

TEST(mirror_a_leg_that_cannot_take_the_bitmap_is_failed_and_the_write_goes_on)
{
	legs_rig h("mirror", 2);
	h.harness::request(0, W, 0, 4096);
	struct io_uring_sqe s = h.take(UD_TARGET);
	h.answer(s, -EIO);
	CHECK_EQ(h.write_bitmap(), 1u);
	CHECK_CONTAINS(h.status(), s.fd == 1 ? "\"legs\":\"failed,in-sync\"" : "\"legs\":\"in-sync,failed\"");
	CHECK_EQ(h.legs_of(0), 3u - (unsigned)s.fd); /* only the leg that has its bit */
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
}

/* A 4 KiB WRITE on tag whose member on leg `bad` (a fixed file) fails with err while the others succeed;
 * its result. */
static int32_t write_failing_on(legs_rig &h, uint16_t tag, int bad, int32_t err = -EIO)
{
	h.request(tag, W, 0, 4096);
	h.answer_members(tag, bad, err);
	return h.result(tag);
}

TEST(mirror_a_failed_leg_gets_no_more_io)
{
	legs_rig h("mirror", 3);
	CHECK_EQ(write_failing_on(h, 0, 2), 4096); /* the other legs have the data */
	CHECK_CONTAINS(h.status(), "\"legs\":\"in-sync,failed,in-sync\",\"leg2\":\"failed: write at byte 0: EIO");
	h.request(1, W, 0, 4096);
	CHECK_EQ(h.legs_of(1), 0b101);
	h.request(2, FLUSH, 0, 0);
	CHECK_EQ(h.legs_of(2), 0b101);
	h.request(3, R, 0, 4096);
	CHECK_EQ(h.legs_of(3), 0b001);
	h.request(0, R, 0, 4096); /* leg 2's turn: leg 3 takes it */
	CHECK_EQ(h.legs_of(0), 0b100);
	for (uint16_t tag = 0; tag < 4; tag++) {
		h.answer_members(tag);
		CHECK_EQ(h.result(tag), tag == 2 ? 0 : 4096); /* the FLUSH on tag 2 moves no bytes */
	}
}

TEST(mirror_the_last_healthy_leg_failing_fails_the_request)
{
	legs_rig h("mirror", 2);
	CHECK_EQ(write_failing_on(h, 0, 1), 4096);
	CHECK_EQ(write_failing_on(h, 1, 2, -ENOSPC), -ENOSPC);
	CHECK_CONTAINS(h.status(), "\"legs\":\"failed,in-sync\""); /* never marked: there is always a leg to read */
	h.request(2, R, 0, 4096);
	h.complete(UD_MEMBER, 2, 0, -EIO);
	CHECK_EQ(h.result(2), -EIO); /* nowhere else to read it */
	CHECK_EQ(h.logged(UD_MEMBER, 2), 1);
}

TEST(mirror_a_cancelled_member_does_not_fail_its_leg)
{
	legs_rig h("mirror", 2);
	CHECK_EQ(write_failing_on(h, 0, 2, -ECANCELED), -ECANCELED);
	CHECK_CONTAINS(h.status(), "\"mirror\":\"clean\"");
}

/* ---- mirror: discards ---- */

TEST(mirror_a_discard_punches_every_leg_or_block_discards_it)
{
	legs_rig h("mirror", 3, {{"block-discard", 0b010}});
	h.request(0, DISCARD, 8192, 16384);
	CHECK_EQ(h.legs_of(0), 0b101);
	struct io_uring_sqe a = h.take(UD_MEMBER, 0, 0), c = h.take(UD_MEMBER, 0, 1);
	CHECK_FALLOCATE(a, 1, 8192, 16384, PUNCH);
	CHECK_FALLOCATE(c, 3, 8192, 16384, PUNCH);
	struct io_uring_sqe b = h.take(UD_TARGET_REQ, 0, 2);
	CHECK_BLOCK_DISCARD(b, 2, 8192, 16384);
	h.answer(b, 0);
	h.answer(a, 0);
	CHECK(!h.committed(0));
	h.answer(c, 0);
	CHECK_EQ(h.result(0), 0);
}

TEST(mirror_block_discards_beyond_a_requests_ring_ops_wait_their_turn)
{
	legs_rig h("mirror", 3, {{"block-discard", 0b111}});
	h.request(0, DISCARD, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER, 0), 0);
	CHECK_EQ(h.count(UD_TARGET_REQ, 0), MAX_REQUEST_OPS);
	h.complete(UD_TARGET_REQ, 0, 2, 0);
	struct io_uring_sqe third = h.take(UD_TARGET_REQ, 0, 3);
	CHECK_BLOCK_DISCARD(third, 3, 0, 4096);
	h.answer(third, 0);
	CHECK(!h.committed(0));
	h.complete(UD_TARGET_REQ, 0, 1, 0);
	CHECK_EQ(h.result(0), 0);
}

TEST(mirror_a_failed_block_discard_fails_its_leg_but_one_that_cannot_discard_does_not)
{
	legs_rig h("mirror", 2, {{"block-discard", 0b11}});
	h.request(0, DISCARD, 0, 4096);
	h.complete(UD_TARGET_REQ, 0, 1, -EOPNOTSUPP); /* the block layer writes zeroes instead */
	h.complete(UD_TARGET_REQ, 0, 2, -EIO);
	CHECK_EQ(h.result(0), -EOPNOTSUPP);
	CHECK_CONTAINS(h.status(), "\"legs\":\"in-sync,failed\",\"leg2\":\"failed: discard at byte 0: EIO");
}

/* ---- mirror: what lives on the legs ---- */

/* A 1 MiB leg: superblock in its last 4 KiB, the bitmap in the 4 KiB before (16 chunks of 64 KiB). */
static const off_t BITMAP_AT = LEG_BYTES - 8192;

static uint8_t bitmap_byte(int fd)
{
	uint8_t b = 0;
	CHECK_EQ(pread(fd, &b, 1, BITMAP_AT), 1);
	return b;
}

TEST(mirror_a_write_to_a_clean_chunk_has_its_bit_on_every_leg_before_its_members_go)
{
	legs_rig h("mirror", 2);
	CHECK_CONTAINS(h.status(), "\"bitmapBits\":16,\"bitmapDirty\":0,");
	h.request(0, W, 3 * 65536 + 4096, 4096);
	CHECK_EQ(h.legs_of(0), 0b11);
	for (int fd : h.mine)
		CHECK_EQ(bitmap_byte(fd), 1u << 3);
	CHECK_CONTAINS(h.status(), "\"bitmapDirty\":1,");
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
	h.request(1, W, 3 * 65536, 4096); /* a dirty chunk: no bitmap write, the members go at once */
	CHECK_EQ(h.legs_of(1), 0b11);
	h.answer_members(1);
}

/* A verb's write of the whole bitmap (re-add) waits for a queue's write of the block in flight: the
 * queue's, an older picture, must not land after it and unset a bit the verb's made durable. */
TEST(mirror_a_re_add_writes_the_bitmap_only_after_a_queues_bitmap_write_landed)
{
	legs_rig h("mirror", 2, {{"bitmap-chunk-shift", 12}}); /* 4 KiB chunks: 130 is in the bitmap's third word */
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "fail 2"), "\"ok\":true");
	h.harness::request(0, W, 3 << 12, 4096);
	struct io_uring_sqe x = h.take(UD_TARGET); /* chunk 3's bit, to leg 1 */
	CHECK_EQ(h.count(UD_TARGET), 0);
	h.harness::request(1, W, 130 << 12, 4096); /* held until x has landed */
	CHECK_EQ(h.count(UD_MEMBER), 0);
	std::atomic<bool> done{false};
	std::thread readd([&] {
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "re-add 2"), "\"ok\":true");
		done = true;
	});
	for (int i = 0; i < 20 && !done; i++)
		usleep(10000);
	CHECK(!done);
	CHECK_EQ(pwrite(h.k.files[x.fd], reinterpret_cast<void *>(x.addr), x.len, (off_t)x.off), 4096);
	h.answer(x, 4096);
	for (int i = 0; i < 2000 && !(done && h.count(UD_MEMBER, 1)); i++) {
		h.write_bitmap();
		usleep(1000);
	}
	readd.join();
	CHECK(h.count(UD_MEMBER, 1) > 0);
	CHECK_CONTAINS(h.status(), "\"bitmapDirty\":2,");
	for (int fd : h.mine) {
		CHECK_EQ(bitmap_byte(fd), 1u << 3);
		uint8_t b = 0;
		CHECK_EQ(pread(fd, &b, 1, BITMAP_AT + 130 / 8), 1);
		CHECK_EQ(b, 1u << (130 % 8));
	}
	h.answer_members(0);
	h.answer_members(1);
	CHECK_EQ(h.result(0), 4096);
	CHECK_EQ(h.result(1), 4096);
}

TEST(mirror_a_leg_that_failed_is_resynced_by_the_next_mirror_over_the_same_legs)
{
	std::vector<int> fds = {memory_leg(), memory_leg()};
	{
		legs_rig h("mirror", 2, {}, fds);
		CHECK_EQ(write_failing_on(h, 0, 2), 4096);
	}
	/* The failure was in leg 1's superblock before the write completed: the next mirror never reads leg 2
	 * before it is resynced. */
	legs_rig again("mirror", 2, {{"resync-rate", 1}}, fds); /* the resync stays at its first chunk */
	CHECK_CONTAINS(again.status(), "\"legs\":\"in-sync,resyncing\"");
	for (uint16_t tag = 0; tag < 2; tag++) {
		again.request(tag, R, 0, 4096);
		CHECK_EQ(again.legs_of(tag), 0b01);
		again.answer_members(tag);
	}
	for (int fd : fds)
		close(fd);
}

TEST(mirror_grows_in_place_with_its_metadata_at_the_legs_new_end_and_the_bytes_added_zero)
{
	std::vector<int> fds = {memory_leg(), memory_leg()};
	const uint64_t grown = 2 * LEG_BYTES, was = LEG_BYTES - 8192;
	{
		legs_rig h("mirror", 2, {}, fds);
		CHECK_CONTAINS(h.status(), "\"dataSize\":" + std::to_string(was) + ",");
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "grow 4096"), "does not shrink");
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "grow " + std::to_string(grown)), "\"ok\":true");
		CHECK_CONTAINS(h.status(), "\"dataSize\":" + std::to_string(grown) + ",");
		for (int fd : fds) {
			/* The file legs grew to the data, a bitmap block and the superblock; where the old metadata
			 * was is data now, and zero. */
			CHECK_EQ((uint64_t)lseek(fd, 0, SEEK_END), grown + 8192);
			uint8_t old_meta[8192];
			CHECK_EQ(pread(fd, old_meta, sizeof(old_meta), (off_t)was), (ssize_t)sizeof(old_meta));
			for (uint8_t b : old_meta)
				CHECK_EQ(b, 0);
		}
		/* A write to the last chunk, which the mirror did not have: its bit is in the bitmap's new place. */
		h.request(0, W, grown - 4096, 4096);
		CHECK_EQ(h.legs_of(0), 0b11);
		for (int fd : fds) {
			uint8_t b = 0;
			CHECK_EQ(pread(fd, &b, 1, (off_t)grown + 31 / 8), 1);
			CHECK_EQ(b, 1u << (31 % 8));
		}
		h.answer_members(0);
		CHECK_EQ(h.result(0), 4096);
		/* Legs that grew by themselves, with bytes of their own (as a block device does): the bytes added
		 * read zero, on legs that keep their size. */
		std::vector<uint8_t> theirs(LEG_BYTES, 0xff);
		for (int fd : fds)
			CHECK_EQ(pwrite(fd, theirs.data(), theirs.size(), (off_t)(grown + 8192)), (ssize_t)theirs.size());
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "grow " + std::to_string(grown + LEG_BYTES)), "\"ok\":true");
		for (int fd : fds) {
			CHECK_EQ((uint64_t)lseek(fd, 0, SEEK_END), grown + LEG_BYTES + 8192);
			std::vector<uint8_t> added(LEG_BYTES);
			CHECK_EQ(pread(fd, added.data(), added.size(), (off_t)grown), (ssize_t)added.size());
			CHECK_EQ(std::count(added.begin(), added.end(), 0), (long)LEG_BYTES);
		}
	}
	/* The next mirror over the same legs finds its superblocks at their new end: the new size, in sync. */
	legs_rig again("mirror", 2, {}, fds);
	CHECK_CONTAINS(again.status(), "\"dataSize\":" + std::to_string(grown + LEG_BYTES) + ",");
	CHECK_CONTAINS(again.status(), "\"legs\":\"in-sync,in-sync\"");
	for (int fd : fds)
		close(fd);
}

TEST(mirror_a_replace_stopped_before_its_end_goes_on_under_the_next_mirror_over_the_same_legs)
{
	std::vector<int> fds = {memory_leg(), memory_leg(), memory_leg()};
	{
		legs_rig h("mirror", 2, {{"resync-rate", 1}}, {fds[0], fds[1]}); /* the resync stays at its first chunk */
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "replace 2 " + std::to_string(fds[2]) + " 0"), "\"ok\":true");
		CHECK_CONTAINS(h.status(), "\"leg3\":\"replacing leg 2\"");
	}
	legs_rig again("mirror", 3, {{"resync-rate", 1}}, fds);
	CHECK_CONTAINS(again.status(), "\"legs\":\"in-sync,in-sync,resyncing\"");
	CHECK_CONTAINS(again.status(), "\"leg3\":\"replacing leg 2\"");
	for (int fd : fds)
		close(fd);
}

/* `cmd` starts the sync thread's work at a cap of one chunk a second (the rig's options give the floor);
 * after its first chunk, a read. The status once it moved past two more chunks and had time to go on,
 * were it not held back. */
static std::string with_user_io(legs_rig &h, const std::string &cmd, const char *first)
{
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "rate 65536 -"), "\"ok\":true");
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, cmd), "\"ok\":true");
	for (int i = 0; i < 1000 && h.status().find(first) == std::string::npos; i++)
		usleep(1000);
	h.request(0, R, 0, 4096);
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
	usleep(1300000);
	return h.status();
}

TEST(mirror_a_check_that_sees_user_io_goes_at_the_floor_and_says_so)
{
	/* A floor of 1 byte/s: the chunk after the one the read came in waits (until the stop); at the cap it
	 * would compare a chunk a second. */
	legs_rig h("mirror", 2, {{"resync-min-rate", 1}});
	std::string s = with_user_io(h, "check", "\"checkPercent\":6,");
	CHECK_CONTAINS(s, "\"check\":\"running\",\"checkPercent\":18,");
	CHECK_CONTAINS(s, "\"checkYielding\":true");
}

TEST(mirror_user_io_before_the_work_started_does_not_hold_it_back)
{
	/* The sync thread slept while the read came; the check that starts after it goes at the cap (none). */
	legs_rig h("mirror", 2, {{"resync-min-rate", 1}});
	h.request(0, R, 0, 4096);
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "check"), "\"ok\":true");
	for (int i = 0; i < 1000 && h.status().find("\"check\":\"done\"") == std::string::npos; i++)
		usleep(1000);
	CHECK_CONTAINS(h.status(), "\"check\":\"done\",\"checkPercent\":100,");
}

TEST(mirror_rate_reaches_a_check_that_waits_and_refuses_a_floor_above_the_cap)
{
	legs_rig h("mirror", 2, {{"resync-min-rate", 1}});
	std::string s = with_user_io(h, "check", "\"checkPercent\":6,");
	CHECK_CONTAINS(s, "\"checkPercent\":18,"); /* waits at 1 byte/s, as above */
	CHECK_CONTAINS(s, "\"resyncRateMax\":65536,\"resyncRateMin\":1,");
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "rate fast -"), "usage: rate MAX|- MIN|-");
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "rate - 0"), "must be above 0");
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "rate 1000000 2000000"), "--resync-min-rate 2 is above --resync-rate 1");
	CHECK_CONTAINS(h.status(), "\"checkPercent\":18,"); /* nothing changed */
	/* New rates wake the check where it waits: it goes on at once. */
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "rate 0 1000000000"),
		       "resync at the legs' speed, 1000 MB/s while user IO is active");
	for (int i = 0; i < 1000 && h.status().find("\"check\":\"done\"") == std::string::npos; i++)
		usleep(1000);
	CHECK_CONTAINS(h.status(), "\"check\":\"done\",\"checkPercent\":100,");
	/* The floor kept yields to a lower cap. */
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "rate 2000000 -"), "resync at most 2 MB/s, 2 MB/s while user IO is active");
	CHECK_CONTAINS(h.status(), "\"resyncRateMax\":2000000,\"resyncRateMin\":1000000000,");
}

TEST(mirror_a_missing_leg_is_an_empty_slot_that_gets_no_io_and_replace_fills_it)
{
	std::vector<int> fds = {memory_leg(), memory_leg()};
	{
		legs_rig h("mirror", 2, {}, fds);
	}
	int fresh = memory_leg();
	{
		legs_rig h("mirror", 2, {}, {fds[0], -1});
		CHECK_CONTAINS(h.status(), "\"legs\":\"in-sync,empty\"");
		h.request(0, W, 0, 4096);
		CHECK_EQ(h.legs_of(0), 0b01);
		h.answer_members(0);
		CHECK_EQ(h.result(0), 4096);
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "re-add 2"), "leg 2 is missing");
		CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "replace 2 " + std::to_string(fresh) + " 0"), "\"ok\":true");
		for (int i = 0; i < 1000 && h.status().find("\"legs\":\"in-sync,in-sync\"") == std::string::npos; i++)
			usleep(1000);
		CHECK_CONTAINS(h.status(), "\"legs\":\"in-sync,in-sync\"");
	}
	for (int fd : {fds[0], fds[1], fresh})
		close(fd);
}

TEST(mirror_a_new_mirror_with_a_missing_leg_starts_degraded_from_the_leg_it_has)
{
	int fd = memory_leg();
	{
		legs_rig h("mirror", 2, {{"assume-clean", 0}}, {-1, fd});
		CHECK_CONTAINS(h.status(), "\"mirror\":\"degraded\",\"legs\":\"empty,in-sync\"");
	}
	close(fd);
}

TEST(mirror_an_added_legs_file_is_in_the_ring_before_its_first_member)
{
	legs_rig h("mirror", 2);
	int fd = memory_leg();
	CHECK_CONTAINS(h.ops->command(&h.dev.tgt, "add-leg " + std::to_string(fd) + " 0"), "\"ok\":true");
	CHECK_EQ(h.k.files.size(), 1u + MAX_MEMBERS); /* /dev/ublkcN and a slot per possible leg */
	h.request(0, W, 0, 4096);
	CHECK_EQ(h.legs_of(0), 0b111);
	CHECK_EQ(h.k.files[3], fd);
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
	CHECK_CONTAINS(h.status(), "\"legs\":\"in-sync,in-sync,");
	close(fd);
}

TEST(fault_over_mirror_keeps_the_mirrors_own_queue_state_and_fails_only_its_range)
{
	legs_rig h("mirror", 2, {}, {}, {{"fail-range", {1 << 19, 4096, EIO}}});
	/* The mirror's held write and its bitmap write, through the wrapper: its per-queue state works. */
	h.harness::request(0, W, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER), 0);
	CHECK_EQ(h.write_bitmap(), 2u);
	CHECK_EQ(h.legs_of(0), 0b11);
	h.answer_members(0);
	CHECK_EQ(h.result(0), 4096);
	h.request(1, R, 1 << 19, 4096); /* the injected range: no member, an error */
	CHECK_EQ(h.count(UD_MEMBER, 1), 0);
	CHECK_EQ(h.result(1), -EIO);
	CHECK_CONTAINS(h.status(), "\"legs\":\"in-sync,in-sync\""); /* the wrapped target's status */
}

/* ---- mirror: the resync yields to user IO ---- */

TEST(mirror_resync_counts_user_io_active_until_the_queues_count_stood_still_for_yield_ns)
{
	struct user_io_watch w;
	CHECK(!w.active(0, 1)); /* no request yet */
	CHECK(w.active(3, 1000));
	CHECK(w.active(3, 1000 + YIELD_NS - 1));
	CHECK(!w.active(3, 1000 + YIELD_NS));
	CHECK(w.active(4, 2 * YIELD_NS)); /* one more request */
}

TEST(mirror_resync_floor_is_the_min_rate_never_above_the_cap)
{
	CHECK_EQ(resync_floor(0, 4000000), 4000000);       /* no cap */
	CHECK_EQ(resync_floor(100000000, 4000000), 4000000);
	CHECK_EQ(resync_floor(1000000, 4000000), 1000000); /* a cap below the default floor */
}

TEST(mirror_a_resync_that_sees_user_io_goes_at_the_floor_and_says_so)
{
	int fd = memory_leg();
	{
		/* A floor of 1 byte/s: the chunk after the one the read came in waits (until the stop); at the cap
		 * it would copy a chunk a second. */
		legs_rig h("mirror", 2, {{"resync-min-rate", 1}});
		std::string s = with_user_io(h, "add-leg " + std::to_string(fd) + " 0", "\"resyncCopied\":65536,");
		CHECK_CONTAINS(s, "\"legs\":\"in-sync,in-sync,resyncing\"");
		CHECK_CONTAINS(s, "\"resyncCopied\":196608,");
		CHECK_CONTAINS(s, "\"resyncYielding\":true");
	}
	close(fd);
}
