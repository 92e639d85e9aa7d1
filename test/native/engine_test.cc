/* The request engine (native/queue.cc, native/request.cc) on the fake kernel, with scripted targets. */
#include <errno.h>
#include <sys/mman.h>

#include "harness.h"

enum { R = UBLK_IO_OP_READ, W = UBLK_IO_OP_WRITE, FLUSH = UBLK_IO_OP_FLUSH };

/* Worst case of CQEs one request may cause besides its parked command (what the CQ must hold). */
static const unsigned cqes_per_request = 2 + 2 * MAX_MEMBERS + MAX_REQUEST_OPS;

using io_fn = std::function<int(struct tq *, struct request *)>;
using fold_fn = std::function<enum member_fold(struct tq *, struct request *, unsigned, int)>;

/* A started queue on a scripted target: `io` describes each request, `fold` (if set) folds each member.
 * Every case ends with the queue stopping cleanly: each request committed, or parked where STOP_DEV's
 * abort ends it. Locals its hooks capture are declared before it, so they outlive that stop. */
struct rig : harness {
	explicit rig(enum data_mode mode, io_fn io = nullptr, fold_fn fold = nullptr, uint16_t depth = 4) : harness(mode, depth)
	{
		queue_io = std::move(io);
		on_member = std::move(fold);
		start();
	}
	~rig() { CHECK(stop()); }
};

static struct member *add(struct request *req, enum member_kind kind, uint8_t file, uint32_t buf_off, uint32_t len,
			  uint64_t file_off = 0)
{
	struct member *m = add_member(req, kind, file);
	m->buf_off = buf_off;
	m->len = len;
	m->file_off = file_off;
	return m;
}

/* One member a scripted target describes; REQ_LEN stands for the request's length. */
static const uint32_t REQ_LEN = ~0u;
struct spec {
	enum member_kind kind;
	uint8_t file;
	uint32_t buf_off = 0;
	uint32_t len = REQ_LEN;
	uint64_t file_off = 0;
	uint8_t stream = 0;
};

/* A target that describes every request as these members, then returns ret (QUEUE_IO_PENDING: it holds
 * the request, never to release it). */
static io_fn describes(std::vector<spec> specs, int ret = QUEUE_IO_DONE)
{
	return [specs, ret](struct tq *, struct request *req) {
		for (const spec &s : specs)
			add(req, s.kind, s.file, s.buf_off, s.len == REQ_LEN ? req->len : s.len, s.file_off)->stream = s.stream;
		return ret;
	};
}

/* The whole request as one member on file 1: a READ or a WRITE. */
static int whole(struct tq *, struct request *req)
{
	add(req, req->op == R ? MEMBER_READ : MEMBER_WRITE, 1, 0, req->len, req->offset);
	return QUEUE_IO_DONE;
}

/* Keep the request; the test releases it. */
static int hold(struct tq *, struct request *)
{
	return QUEUE_IO_PENDING;
}

/* A target that answers every request itself with `result`, adding no member. */
static io_fn answers(int32_t result)
{
	return [result](struct tq *, struct request *req) {
		req->result = result;
		return (int)QUEUE_IO_DONE;
	};
}

/* Every failed member is forgotten (a failed mirror leg). */
static enum member_fold ignore_failures(struct tq *, struct request *, unsigned, int res)
{
	return res < 0 ? FOLD_IGNORE : FOLD_DEFAULT;
}

/* The target holds the request with one ring operation of its own in flight (cookie). */
static io_fn holds_with_op(uint64_t cookie)
{
	return [cookie](struct tq *tq, struct request *req) {
		io_uring_prep_nop(tq_sqe(tq, req, cookie));
		return (int)QUEUE_IO_PENDING;
	};
}

static void drain_now(harness &h)
{
	queue_request_drain(&h.q);
	h.wake();
}

/* A FLUSH on tag that the target holds; its generation, for a remote completion. */
static uint32_t held_flush(harness &h, uint16_t tag)
{
	h.request(tag, FLUSH, 0, 0);
	return h.q.ios[tag].req.gen;
}

/* Lease mode: a READ on tag 0 whose leader and member succeed, so it is committed. */
static void lease_read_to_its_commit(harness &h)
{
	h.request(0, R, 0, 4096);
	h.complete(UD_LEADER, 0, -1, 0);
	h.complete(UD_MEMBER, 0, 0, 4096);
}


/* ---- setup ---- */

TEST(setup_fetches_every_tag_and_sizes_the_cq_for_the_worst_case)
{
	rig h(MODE_AUTO_LEASE, nullptr, nullptr, 8);
	CHECK_EQ(h.count(UD_CMD), 8);
	for (uint16_t tag = 0; tag < 8; tag++) {
		struct io_uring_sqe s = h.take(UD_CMD, tag);
		CHECK_EQ(sqe_cmd_op(s), UBLK_U_IO_FETCH_REQ);
		CHECK_EQ(sqe_io_cmd(s).tag, tag);
		CHECK_EQ(s.addr, tag | (uint64_t)UBLK_AUTO_BUF_REG_FALLBACK << 16); /* auto-lease slot = tag */
		h.k.pending.push_back(s);
	}
	CHECK_EQ(h.count(UD_WAKE), 1);
	CHECK(h.k.params.flags & IORING_SETUP_CQSIZE);
	CHECK(h.k.params.cq_entries >= 8 + 2 + h.ops.queue_ops + 8 * cqes_per_request);
	CHECK_EQ(h.q.max_serving, 8);
	CHECK_EQ(h.k.nr_files, 1);
	CHECK_EQ(h.k.nr_sparse_bufs, 16); /* [0, depth) auto leases, [depth, 2 depth) manual ones */
}

TEST(copy_mode_registers_no_buffers_and_fetch_names_the_copy_buffer)
{
	rig h(MODE_COPY, nullptr, nullptr, 2);
	CHECK_EQ(h.k.nr_sparse_bufs, 0);
	struct io_uring_sqe s = h.take(UD_CMD, 1);
	CHECK(h.q.ios[1].buf != nullptr);
	CHECK_EQ(sqe_io_cmd(s).addr, (uintptr_t)h.q.ios[1].buf);
	h.k.pending.push_back(s);
}

TEST(refused_fetch_fails_setup_with_the_tag_named)
{
	harness h(MODE_AUTO_LEASE, 4);
	h.k.on_submit = [](fake_kernel *k, const struct io_uring_sqe &s) {
		if (ud_kind_of(s.user_data) == UD_CMD && ud_tag(s.user_data) == 2)
			k->post(s.user_data, -EINVAL);
	};
	h.start();
	CHECK(h.k.queue_ended); /* queue_run returned without serving */
	CHECK_CONTAINS(queue_error(&h.q), "the kernel refused FETCH of tag 2");
	CHECK(!h.k.ring_open);
}

/* ---- a request's life ---- */

TEST(result_without_members_is_committed)
{
	rig h(MODE_AUTO_LEASE, answers(-EROFS));
	h.request(0, W, 0, 4096);
	CHECK_EQ(h.result(0), -EROFS);
	CHECK_EQ(h.q.stats->errors.load(), 1);
	CHECK_EQ(h.logged(UD_MEMBER), 0);
}

TEST(auto_lease_read_is_one_fixed_read_on_the_tags_slot)
{
	rig h(MODE_AUTO_LEASE, whole);
	h.request(2, R, 8192, 4096);
	CHECK(!h.committed(2));
	struct io_uring_sqe s = h.take(UD_MEMBER, 2, 0);
	CHECK_RW(s, IORING_OP_READ_FIXED, 1, 0, 4096, 8192);
	CHECK(s.flags & IOSQE_FIXED_FILE);
	CHECK_EQ(s.buf_index, 2);
	CHECK_EQ(ud_gen(s.user_data), h.q.ios[2].req.gen);
	CHECK_EQ(h.logged(UD_LEADER), 0); /* the driver leased it already */
	h.answer(s, 4096);
	CHECK_EQ(h.result(2), 4096);
	CHECK_EQ(h.q.stats->leased.load(), 1);
}

TEST(lease_mode_leader_goes_before_any_member)
{
	rig h(MODE_LEASE, whole);
	h.request(1, W, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER), 0);
	struct io_uring_sqe l = h.take(UD_LEADER, 1);
	CHECK_EQ(sqe_cmd_op(l), UBLK_U_IO_REGISTER_IO_BUF);
	CHECK_EQ(sqe_io_cmd(l).addr, 4 + 1); /* manual leases live at depth + tag */
	h.answer(l, 0);
	struct io_uring_sqe m = h.take(UD_MEMBER, 1, 0);
	CHECK_EQ(m.opcode, IORING_OP_WRITE_FIXED);
	CHECK_EQ(m.buf_index, 5);
	h.answer(m, 4096);
	CHECK_EQ(h.result(1), 4096);
}

TEST(lease_is_given_back_in_the_batch_before_the_commit)
{
	rig h(MODE_LEASE, whole);
	lease_read_to_its_commit(h);
	size_t n = h.k.log.size();
	CHECK(n >= 2);
	const struct io_uring_sqe &un = h.k.log[n - 2], &commit = h.k.log[n - 1];
	CHECK_EQ(ud_kind_of(un.user_data), UD_UNLEASE);
	CHECK_EQ(sqe_cmd_op(un), UBLK_U_IO_UNREGISTER_IO_BUF);
	CHECK(un.flags & IOSQE_CQE_SKIP_SUCCESS);
	CHECK_EQ(sqe_cmd_op(commit), UBLK_U_IO_COMMIT_AND_FETCH_REQ);
	CHECK_EQ(h.result(0), 4096);
}

TEST(failed_leader_drops_the_members_and_tells_the_target)
{
	rig h(MODE_LEASE, describes({{MEMBER_WRITE, 1}, {MEMBER_WRITE, 2}}));
	h.request(3, W, 0, 4096);
	h.complete(UD_LEADER, 3, -1, -EBUSY);
	CHECK_EQ(h.result(3), -EBUSY);
	CHECK_EQ(h.logged(UD_MEMBER), 0);
	CHECK_EQ(h.member_calls.size(), 2);
	for (const member_call &c : h.member_calls)
		CHECK_EQ(c.res, -EBUSY);
}

TEST(unregister_refusal_is_reported)
{
	rig h(MODE_LEASE, whole);
	lease_read_to_its_commit(h);
	h.complete(UD_UNLEASE, 0, -1, -EINVAL);
	CHECK_CONTAINS(queue_error(&h.q), "UNREGISTER_IO_BUF refused");
}

TEST(flush_member_needs_no_lease)
{
	rig h(MODE_LEASE, describes({{MEMBER_FSYNC, 1}}));
	h.request(0, FLUSH, 0, 0);
	CHECK_EQ(h.logged(UD_LEADER), 0);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_EQ(s.opcode, IORING_OP_FSYNC);
	CHECK_EQ(s.fsync_flags, IORING_FSYNC_DATASYNC);
	h.answer(s, 0);
	CHECK_EQ(h.result(0), 0);
}

/* ---- short transfers, errors, coverage ---- */

/* The kernel hands tag a 4096-byte request at off, and its member's first SQE moves only `moved` bytes. */
static void first_sqe_moves(harness &h, uint16_t tag, uint8_t op, uint64_t off, int32_t moved)
{
	h.request(tag, op, off, 4096);
	h.complete(UD_MEMBER, tag, 0, moved);
}

TEST(short_read_is_continued_where_it_stopped)
{
	rig h(MODE_AUTO_LEASE, whole);
	first_sqe_moves(h, 0, R, 8192, 1024);
	CHECK(!h.committed(0));
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(s, IORING_OP_READ_FIXED, 1, 1024, 3072, 8192 + 1024);
	h.answer(s, 3072);
	CHECK_EQ(h.result(0), 4096);
	CHECK_EQ(h.q.stats->short_transfers.load(), 1);
	CHECK_EQ(h.member_calls.size(), 1); /* the target hears of the whole transfer once */
}

TEST(short_write_is_continued_twice)
{
	rig h(MODE_COPY, whole);
	first_sqe_moves(h, 1, W, 0, 512);
	h.complete(UD_MEMBER, 1, 0, 512);
	struct io_uring_sqe s = h.take(UD_MEMBER, 1, 0);
	CHECK_RW(s, IORING_OP_WRITE, 1, (uintptr_t)h.q.ios[1].buf + 1024, 3072, 1024);
	h.answer(s, 3072);
	CHECK_EQ(h.result(1), 4096);
}

TEST(end_of_file_inside_a_read_fails_it)
{
	rig h(MODE_AUTO_LEASE, whole);
	first_sqe_moves(h, 0, R, 0, 0); /* the end of the file */
	CHECK_EQ(h.result(0), -EIO);
}

TEST(first_error_wins)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_WRITE, 1, 0, 2048}, {MEMBER_WRITE, 1, 2048, 2048, 2048}}));
	h.request(0, W, 0, 4096);
	h.complete(UD_MEMBER, 0, 1, -ENOSPC);
	CHECK(!h.committed(0));
	h.complete(UD_MEMBER, 0, 0, -EIO);
	CHECK_EQ(h.result(0), -ENOSPC);
}

TEST(pieces_completing_out_of_order_cover_the_request)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_READ, 1, 0, 1024, 0},
					  {MEMBER_READ, 1, 1024, 1024, 1024},
					  {MEMBER_READ, 1, 2048, 1024, 2048},
					  {MEMBER_READ, 1, 3072, 1024, 3072}}));
	h.request(0, R, 0, 4096);
	for (int i : {3, 1, 0})
		h.complete(UD_MEMBER, 0, i, 1024);
	CHECK(!h.committed(0));
	h.complete(UD_MEMBER, 0, 2, 1024);
	CHECK_EQ(h.result(0), 4096);
}

TEST(a_gap_between_members_fails_the_request)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_READ, 1, 0, 1024}, {MEMBER_READ, 1, 2048, 2048, 2048}}));
	h.request(0, R, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, 1024);
	h.complete(UD_MEMBER, 0, 1, 2048);
	CHECK_EQ(h.result(0), -EIO); /* never over-report: the kernel would hand unfilled pages to the reader */
	CHECK_CONTAINS(queue_error(&h.q), "left part of a request uncovered");
}

TEST(overlapping_legs_count_once)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_WRITE, 1}, {MEMBER_WRITE, 2}, {MEMBER_WRITE, 3, 1024, 1024}}));
	h.request(0, W, 0, 4096);
	h.complete(UD_MEMBER, 0, 2, 1024);
	h.complete(UD_MEMBER, 0, 0, 4096);
	h.complete(UD_MEMBER, 0, 1, 4096);
	CHECK_EQ(h.result(0), 4096);
	CHECK_EQ(h.q.ios[0].nr_cov, 1);
}

TEST(fold_ignore_forgets_a_failed_leg)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_WRITE, 1}, {MEMBER_WRITE, 2}}), ignore_failures);
	h.request(0, W, 0, 4096);
	h.complete(UD_MEMBER, 0, 1, -EIO);
	h.complete(UD_MEMBER, 0, 0, 4096);
	CHECK_EQ(h.result(0), 4096);
}

TEST(an_ignored_member_covers_nothing)
{
	rig h(MODE_AUTO_LEASE, whole, [](struct tq *, struct request *, unsigned, int) { return FOLD_IGNORE; });
	h.request(0, R, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, 4096);
	CHECK_EQ(h.result(0), -EIO);
}

/* The first time member idx completes, it becomes the piece at `to` in the buffer (and as far on in the
 * file); after that it folds as usual. */
static fold_fn moves_once_to(uint32_t to)
{
	return [to](struct tq *, struct request *req, unsigned idx, int) {
		struct member *m = &req->members[idx];
		if (m->buf_off == to)
			return FOLD_DEFAULT;
		m->file_off += to - m->buf_off;
		m->buf_off = to;
		return FOLD_RETRY;
	};
}

TEST(fold_retry_issues_the_next_piece_and_keeps_what_the_first_covered)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_READ, 1, 0, 4096, 1 << 20}}), moves_once_to(4096));
	h.request(0, R, 0, 8192);
	h.complete(UD_MEMBER, 0, 0, 4096);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(s, IORING_OP_READ_FIXED, 1, 4096, 4096, (1 << 20) + 4096);
	h.answer(s, 4096);
	CHECK_EQ(h.result(0), 8192);
	CHECK_EQ(h.q.stats->retries.load(), 1);
}

/* covered() asks for one range: the ranges are kept sorted and merged, so a first range [0, len) with a
 * second one after it exists only if a member covered bytes past the request. issue() refuses such a
 * member, but a retried one is issued as the target changed it. */
TEST(a_member_retried_past_the_end_of_the_request_fails_it)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_READ, 1, 0, 4096}}), moves_once_to(8192));
	h.request(0, R, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, 4096); /* retried to [8192, 12288): outside the request, never issued */
	CHECK_EQ(h.result(0), -EIO);
}

TEST(fold_retry_moves_a_failed_read_to_another_leg)
{
	rig h(MODE_AUTO_LEASE, whole, [](struct tq *, struct request *req, unsigned idx, int res) {
		if (res >= 0)
			return FOLD_DEFAULT;
		req->members[idx].file = 2;
		return FOLD_RETRY;
	});
	h.request(0, R, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, -EIO);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(s, IORING_OP_READ_FIXED, 2, 0, 4096, 0);
	h.answer(s, 4096);
	CHECK_EQ(h.result(0), 4096);
}

TEST(fold_retry_while_draining_issues_nothing)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_READ, 1}}, QUEUE_IO_PENDING),
	      [](struct tq *, struct request *, unsigned, int) { return FOLD_RETRY; });
	h.request(0, R, 0, 4096);
	drain_now(h);
	h.take(UD_CANCEL, 0);
	h.complete(UD_MEMBER, 0, 0, 4096); /* it completed before the cancel reached it */
	CHECK_EQ(h.logged(UD_MEMBER), 1);
	CHECK_EQ(h.result(0), -EIO);
}

TEST(too_many_members_fail_the_request_before_any_is_issued)
{
	rig h(MODE_AUTO_LEASE, [](struct tq *, struct request *req) {
		for (unsigned i = 0; i <= MAX_MEMBERS; i++)
			add(req, MEMBER_READ, 1, 0, 512);
		CHECK(req->overflow);
		CHECK_EQ(req->nr_members, MAX_MEMBERS);
		return (int)QUEUE_IO_DONE;
	});
	h.request(0, R, 0, 4096);
	CHECK_EQ(h.logged(UD_MEMBER), 0);
	CHECK_EQ(h.result(0), -EIO);
	CHECK_CONTAINS(queue_error(&h.q), "more than 16 members");
}

TEST(a_member_outside_the_request_is_refused)
{
	rig h(MODE_COPY, describes({{MEMBER_READ, 1, 2048, 4096}}));
	h.request(0, R, 0, 4096);
	CHECK_EQ(h.logged(UD_MEMBER), 0);
	CHECK_EQ(h.result(0), -EIO);
}

TEST(add_member_refuses_past_the_maximum_and_on_a_closed_request)
{
	struct request req = {};
	req.open = true;
	for (unsigned i = 0; i < MAX_MEMBERS; i++)
		CHECK(add_member(&req, MEMBER_READ, 1) == &req.members[i]);
	CHECK(!req.overflow);
	CHECK(add_member(&req, MEMBER_READ, 1) == &req.members[MAX_MEMBERS]);
	CHECK(req.overflow);
	struct request closed = {};
	CHECK(add_member(&closed, MEMBER_WRITE, 2) == &closed.members[MAX_MEMBERS]);
	CHECK_EQ(closed.nr_members, 0);
	CHECK(!closed.overflow); /* a closed request is not failed by it: the member just goes nowhere */
}

/* ---- zero-copy sends: two completions ---- */

TEST(zero_copy_send_holds_the_lease_until_its_notification)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_SEND_ZC, 1}}));
	h.request(1, W, 0, 4096);
	struct io_uring_sqe s = h.take(UD_MEMBER, 1, 0);
	CHECK_EQ(s.opcode, IORING_OP_SEND_ZC);
	CHECK(s.ioprio & IORING_RECVSEND_FIXED_BUF);
	CHECK_EQ(s.buf_index, 1);
	h.answer(s, 4096, IORING_CQE_F_MORE);
	CHECK(!h.committed(1)); /* the network still holds the pages */
	h.answer(s, 0, IORING_CQE_F_NOTIF);
	CHECK_EQ(h.result(1), 4096);
}

TEST(short_zero_copy_send_waits_for_both_notifications)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_SEND_ZC, 1}}));
	h.request(0, W, 0, 4096);
	struct io_uring_sqe a = h.take(UD_MEMBER, 0, 0);
	h.answer(a, 1000, IORING_CQE_F_MORE);
	struct io_uring_sqe b = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(b, IORING_OP_SEND_ZC, 1, 1000, 3096, 0);
	h.k.post(b.user_data, 3096, IORING_CQE_F_MORE);
	h.answer(a, 0, IORING_CQE_F_NOTIF);
	CHECK(!h.committed(0));
	h.answer(b, 0, IORING_CQE_F_NOTIF);
	CHECK_EQ(h.result(0), 4096);
}

/* ---- streams ---- */

static char header[28];

static int header_then_payload(struct tq *, struct request *req)
{
	struct member *m = add(req, MEMBER_SEND, 1, 0, sizeof(header));
	m->flags = MEMBER_F_TARGET_BUF;
	m->ptr = header;
	m->stream = 1;
	add(req, MEMBER_SEND, 1, 0, req->len)->stream = 1;
	return QUEUE_IO_DONE;
}

TEST(members_of_a_stream_go_one_at_a_time_in_order)
{
	rig h(MODE_AUTO_LEASE, header_then_payload);
	h.request(0, W, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER), 1);
	struct io_uring_sqe hd = h.take(UD_MEMBER, 0, 0);
	CHECK_EQ(hd.addr, (uintptr_t)header);
	CHECK(!(hd.ioprio & IORING_RECVSEND_FIXED_BUF)); /* the target's memory, not the lease */
	h.answer(hd, sizeof(header));
	struct io_uring_sqe p = h.take(UD_MEMBER, 0, 1);
	CHECK(p.ioprio & IORING_RECVSEND_FIXED_BUF);
	h.answer(p, 4096);
	CHECK_EQ(h.result(0), 4096);
}

TEST(a_stream_orders_members_of_different_requests)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_SEND, 1, 0, REQ_LEN, 0, 2}}));
	h.request(0, W, 0, 4096);
	h.request(1, W, 4096, 4096);
	CHECK_EQ(h.count(UD_MEMBER, 1), 0);
	h.complete(UD_MEMBER, 0, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER, 1), 1);
	h.complete(UD_MEMBER, 1, 0, 4096);
	CHECK_EQ(h.result(0), 4096);
	CHECK_EQ(h.result(1), 4096);
}

TEST(a_short_send_on_a_stream_is_finished_before_the_next_member)
{
	rig h(MODE_AUTO_LEASE, header_then_payload);
	h.request(0, W, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, 10);
	CHECK_EQ(h.count(UD_MEMBER, 0), 1);
	struct io_uring_sqe rest = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(rest, IORING_OP_SEND, 1, (uintptr_t)header + 10, sizeof(header) - 10, 0);
	h.answer(rest, sizeof(header) - 10);
	h.complete(UD_MEMBER, 0, 1, 4096);
	CHECK_EQ(h.result(0), 4096);
}

/* ---- generations: stale completions ---- */

TEST(a_member_cqe_of_an_earlier_request_is_dropped)
{
	rig h(MODE_AUTO_LEASE, whole);
	h.request(0, R, 0, 4096);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_EQ(ud_gen(s.user_data), 1);
	uint64_t stale = (s.user_data & 0xffffffffull) | (uint64_t)(ud_gen(s.user_data) - 1) << 32;
	h.k.post(stale, 4096);
	h.k.run();
	CHECK(!h.committed(0));
	CHECK_EQ(h.member_calls.size(), 0);
	h.answer(s, 4096);
	CHECK_EQ(h.result(0), 4096);
}

TEST(each_request_on_a_tag_has_a_new_generation)
{
	rig h(MODE_AUTO_LEASE, whole);
	h.request(0, R, 0, 4096);
	h.complete(UD_MEMBER, 0, 0, 4096);
	CHECK_EQ(h.result(0), 4096);
	h.request(0, R, 0, 4096);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_EQ(ud_gen(s.user_data), 2);
	h.answer(s, 4096);
}

TEST(a_late_target_cqe_of_an_ended_request_is_dropped)
{
	int delivered = 0;
	rig h(MODE_AUTO_LEASE, holds_with_op(7));
	h.on_cqe = [&delivered](struct tq *, struct request *, uint64_t, const struct io_uring_cqe *) { delivered++; };
	h.request(0, FLUSH, 0, 0);
	struct io_uring_sqe op = h.take(UD_TARGET_REQ, 0);
	CHECK_EQ(ud_index(op.user_data), 7);
	drain_now(h);
	CHECK_EQ(h.result(0), -EIO);
	h.answer(op, 0);
	CHECK_EQ(delivered, 0);
	CHECK_EQ(h.q.target_ops, 0);
}

TEST(a_queue_wide_target_op_gets_its_48_bit_cookie_back)
{
	uint64_t got = 0;
	bool had_req = true;
	rig h(MODE_AUTO_LEASE, [](struct tq *tq, struct request *req) {
		io_uring_prep_nop(tq_sqe(tq, nullptr, 0xba9876543210ull));
		req->result = 0;
		return (int)QUEUE_IO_DONE;
	});
	h.on_cqe = [&](struct tq *, struct request *req, uint64_t cookie, const struct io_uring_cqe *) {
		got = cookie;
		had_req = req != nullptr;
	};
	h.request(0, FLUSH, 0, 0);
	h.complete(UD_TARGET, -1, -1, 0);
	CHECK_EQ(got, 0xba9876543210ull);
	CHECK(!had_req);
}

/* ---- requests the target holds ---- */

TEST(a_held_request_is_released_from_the_targets_own_completion)
{
	rig h(MODE_AUTO_LEASE, holds_with_op(3));
	h.on_cqe = [](struct tq *tq, struct request *req, uint64_t cookie, const struct io_uring_cqe *cqe) {
		CHECK_EQ(cookie, 3);
		CHECK(req && req->tag == 2);
		request_complete(tq, req, cqe->res);
	};
	h.request(2, FLUSH, 0, 0);
	CHECK(!h.committed(2));
	h.complete(UD_TARGET_REQ, 2, -1, -ENOSPC);
	CHECK_EQ(h.result(2), -ENOSPC);
}

TEST(members_added_to_a_held_request_are_waited_for_after_its_release)
{
	rig h(MODE_AUTO_LEASE, holds_with_op(1));
	h.on_cqe = [](struct tq *tq, struct request *req, uint64_t, const struct io_uring_cqe *) {
		add(req, MEMBER_READ, 1, 0, req->len);
		request_run(tq, req);
		request_complete(tq, req, 0);
	};
	h.request(0, R, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER), 0);
	h.complete(UD_TARGET_REQ, 0, -1, 0);
	CHECK(!h.committed(0));
	h.complete(UD_MEMBER, 0, 0, 4096);
	CHECK_EQ(h.result(0), 4096);
}

/* ---- the remote hand-over queue ---- */

using remote_fn = std::function<void(struct tq *, struct request *, const struct remote_completion &)>;

/* A scripted target with an on_remote op: `remote` sees every completion the engine lets through. */
struct remote_rig : harness {
	remote_fn remote;
	std::vector<struct remote_completion> seen;
	remote_rig(io_fn io, remote_fn fn) : harness(MODE_AUTO_LEASE), remote(std::move(fn))
	{
		queue_io = std::move(io);
		ops.on_remote = [](struct tq *tq, struct request *req, const struct remote_completion &c) {
			auto *self = static_cast<remote_rig *>(static_cast<harness *>(tq->t->priv));
			self->seen.push_back(c);
			self->remote(tq, req, c);
		};
		start();
	}
	~remote_rig() { CHECK(stop()); }
};

TEST(a_remote_completion_commits_its_result)
{
	rig h(MODE_AUTO_LEASE, hold);
	uint32_t gen = held_flush(h, 1);
	int ret = 1;
	std::thread other([&] { ret = queue_complete_remote(&h.q, {1, gen, -ENOSPC, {}}); });
	other.join();
	CHECK_EQ(ret, 0);
	CHECK(!h.committed(1)); /* only the queue thread completes, once woken */
	h.wake();
	CHECK_EQ(h.result(1), -ENOSPC);
	CHECK_EQ(h.count(UD_WAKE), 1); /* the wake read is armed again */
}

TEST(a_remote_completion_goes_to_the_targets_on_remote_which_may_serve_it_as_a_member_on_the_lease)
{
	remote_rig h(
		[](struct tq *, struct request *req) {
			req->copy = true; /* the target looked at it through a copy first */
			return (int)QUEUE_IO_PENDING;
		},
		[](struct tq *tq, struct request *req, const struct remote_completion &c) {
			req->copy = false;
			add(req, MEMBER_READ, (uint8_t)c.arg[0], 0, req->len, c.arg[1]);
			request_complete(tq, req, c.result);
		});
	h.request(0, R, 0, 8192);
	CHECK_EQ(queue_complete_remote(&h.q, {0, h.q.ios[0].req.gen, 0, {1, 12345}}), 0);
	CHECK_EQ(h.seen.size(), 0); /* not before the queue thread takes it */
	h.wake();
	CHECK_EQ(h.seen.size(), 1);
	struct io_uring_sqe s = h.take(UD_MEMBER, 0, 0);
	CHECK_RW(s, IORING_OP_READ_FIXED, 1, 0, 8192, 12345);
	CHECK(!h.committed(0));
	h.answer(s, 8192);
	CHECK_EQ(h.result(0), 8192);
}

TEST(a_remote_completion_for_an_earlier_request_is_dropped)
{
	rig h(MODE_AUTO_LEASE, hold);
	uint32_t gen = held_flush(h, 0);
	CHECK_EQ(queue_complete_remote(&h.q, {0, gen - 1, -EIO, {}}), 0);
	h.wake();
	CHECK(!h.committed(0));
	CHECK_EQ(queue_complete_remote(&h.q, {0, gen, 0, {}}), 0);
	h.wake();
	CHECK_EQ(h.result(0), 0);
}

TEST(on_remote_is_called_only_for_the_request_it_was_meant_for_and_only_while_held)
{
	remote_rig h(hold, [](struct tq *tq, struct request *req, const struct remote_completion &c) {
		request_complete(tq, req, c.result);
	});
	uint32_t gen = held_flush(h, 0);
	CHECK_EQ(queue_complete_remote(&h.q, {0, gen - 1, -EIO, {7, 8}}), 0);
	CHECK_EQ(queue_complete_remote(&h.q, {0, gen + 1, -EIO, {7, 8}}), 0);
	h.wake();
	CHECK_EQ(h.seen.size(), 0);
	CHECK(!h.committed(0));
	CHECK_EQ(queue_complete_remote(&h.q, {0, gen, -ENOSPC, {7, 8}}), 0);
	CHECK_EQ(queue_complete_remote(&h.q, {0, gen, 0, {7, 8}}), 0); /* a second answer for it */
	h.wake();
	CHECK_EQ(h.seen.size(), 1); /* the second found it released */
	CHECK_EQ(h.seen[0].arg[0], 7);
	CHECK_EQ(h.seen[0].arg[1], 8);
	CHECK_EQ(h.result(0), -ENOSPC);
	/* A request the engine ended (a drain) is no longer the target's: its answer is not delivered. */
	uint32_t gen1 = held_flush(h, 1);
	drain_now(h);
	CHECK_EQ(h.result(1), -EIO);
	CHECK_EQ(queue_complete_remote(&h.q, {1, gen1, 0, {}}), 0);
	h.wake();
	CHECK_EQ(h.seen.size(), 1);
}

TEST(the_remote_queue_is_bounded_by_the_depth)
{
	rig h(MODE_AUTO_LEASE, hold, nullptr, 4);
	struct remote_completion c = {0, held_flush(h, 0), 0, {}};
	for (int i = 0; i < 4; i++)
		CHECK_EQ(queue_complete_remote(&h.q, c), 0);
	CHECK_EQ(queue_complete_remote(&h.q, c), -EAGAIN);
	h.wake();
	CHECK_EQ(h.result(0), 0); /* completed once; the repeats found it no longer held */
	CHECK_EQ(queue_complete_remote(&h.q, c), 0); /* room again */
}

/* ---- drain and failure ---- */

TEST(a_drain_fails_held_requests_cancels_their_members_and_releases_them)
{
	unsigned added_after_release = 0;
	rig h(MODE_AUTO_LEASE, [](struct tq *, struct request *req) {
		if (req->tag == 1)
			add(req, MEMBER_RECV, 1, 0, req->len);
		return (int)QUEUE_IO_PENDING;
	});
	h.on_release = [&](struct tq *, struct request *req) {
		CHECK(!req->open);
		uint8_t n = req->nr_members;
		add_member(req, MEMBER_READ, 1); /* refused: the request is no longer the target's */
		added_after_release += req->nr_members - n;
	};
	h.request(0, FLUSH, 0, 0);
	h.request(1, R, 0, 4096);
	struct io_uring_sqe member = h.take(UD_MEMBER, 1, 0);
	drain_now(h);
	CHECK_EQ(h.released.size(), 2);
	CHECK_EQ(added_after_release, 0);
	CHECK_EQ(h.result(0), -EIO);
	struct io_uring_sqe cancel = h.take(UD_CANCEL, 1);
	CHECK_EQ(cancel.opcode, IORING_OP_ASYNC_CANCEL);
	CHECK_EQ(cancel.addr, member.user_data);
	CHECK(!h.committed(1)); /* its buffer is the kernel's until the member ends */
	h.answer(member, -ECANCELED);
	CHECK_EQ(h.result(1), -EIO);
}

TEST(a_request_held_while_draining_is_ended_at_once)
{
	rig h(MODE_AUTO_LEASE, hold);
	drain_now(h);
	h.request(3, FLUSH, 0, 0);
	CHECK_EQ(h.released.size(), 1);
	CHECK_EQ(h.result(3), -EIO);
}

TEST(a_drain_fails_members_still_queued_on_a_stream)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_SEND, 1, 0, REQ_LEN, 0, 1}}, QUEUE_IO_PENDING));
	h.request(0, W, 0, 4096);
	h.request(1, W, 0, 4096);
	CHECK_EQ(h.count(UD_MEMBER, 1), 0);
	drain_now(h);
	h.take(UD_CANCEL, 0);
	h.complete(UD_MEMBER, 0, 0, -ECANCELED);
	CHECK_EQ(h.logged(UD_MEMBER, 1), 0); /* behind a stuck head nothing more goes out */
	CHECK_EQ(h.result(0), -EIO);
	CHECK_EQ(h.result(1), -EIO);
}

TEST(a_failed_queue_fails_new_requests_without_the_target)
{
	int calls = 0;
	rig h(MODE_AUTO_LEASE, [&calls](struct tq *tq, struct request *req) {
		calls++;
		queue_fail(tq, "backend gone");
		req->result = 0;
		return (int)QUEUE_IO_DONE;
	});
	h.request(0, FLUSH, 0, 0);
	CHECK(h.queue_failed_cb);
	CHECK(queue_error(&h.q) == "backend gone");
	h.request(1, FLUSH, 0, 0);
	CHECK_EQ(calls, 1);
	CHECK_EQ(h.result(1), -EIO);
}

TEST(a_refused_commit_is_resent_once_with_eio_then_fails_the_queue)
{
	rig h(MODE_AUTO_LEASE);
	h.request(0, FLUSH, 0, 0);
	CHECK_EQ(h.result(0), 0);
	h.complete(UD_CMD, 0, -1, -EINVAL);
	CHECK_EQ(h.result(0), -EIO);
	CHECK(!h.queue_failed_cb);
	h.complete(UD_CMD, 0, -1, -EINVAL);
	CHECK(h.queue_failed_cb);
	CHECK_CONTAINS(queue_error(&h.q), "tag 0: COMMIT refused");
}

/* ---- the backlog: never more requests at once than the CQ can absorb ---- */

TEST(requests_beyond_the_cqs_room_wait_in_the_backlog_in_order)
{
	const uint16_t depth = 2048;
	std::vector<uint16_t> started;
	rig h(MODE_AUTO_LEASE, [&started](struct tq *, struct request *req) {
		started.push_back(req->tag);
		return (int)QUEUE_IO_PENDING;
	}, nullptr, depth);
	unsigned max = h.q.max_serving;
	CHECK(max < depth);
	CHECK((uint64_t)h.k.params.cq_entries >= depth + 2 + h.ops.queue_ops + (uint64_t)max * cqes_per_request);
	for (uint16_t t = 0; t < max + 2; t++)
		h.request(t, FLUSH, 0, 0);
	CHECK_EQ(started.size(), max);
	CHECK_EQ(queue_complete_remote(&h.q, {0, 1, 0, {}}), 0);
	h.wake();
	CHECK_EQ(h.result(0), 0);
	CHECK_EQ(started.size(), max + 1);
	CHECK_EQ(started.back(), max); /* the first one waiting */
	CHECK_EQ(queue_complete_remote(&h.q, {1, 1, 0, {}}), 0);
	h.wake();
	CHECK_EQ(started.back(), max + 1);
	drain_now(h);
}

/* ---- copy modes ---- */

TEST(copy_mode_reads_into_the_tags_buffer)
{
	rig h(MODE_COPY, whole);
	h.request(2, R, 0, 4096);
	struct io_uring_sqe s = h.take(UD_MEMBER, 2, 0);
	CHECK_RW(s, IORING_OP_READ, 1, (uintptr_t)h.q.ios[2].buf, 4096, 0);
	h.answer(s, 4096);
	CHECK_EQ(h.result(2), 4096);
	struct io_uring_sqe c = h.take(UD_CMD, 2);
	CHECK_EQ(sqe_io_cmd(c).addr, (uintptr_t)h.q.ios[2].buf);
	h.k.pending.push_back(c);
	CHECK_EQ(h.q.stats->copied.load(), 1);
}

static uint64_t user_copy_off(uint16_t tag)
{
	return UBLKSRV_IO_BUF_OFFSET + ((uint64_t)tag << UBLK_TAG_OFF);
}

TEST(user_copy_brings_a_writes_bytes_in_and_a_reads_bytes_back)
{
	harness h(MODE_USER_COPY);
	h.dev.ublkc_fd = memfd_create("ublkc", MFD_CLOEXEC); /* stands for /dev/ublkcN's data window */
	std::string in(4096, 'w');
	CHECK_EQ(pwrite(h.dev.ublkc_fd, in.data(), in.size(), user_copy_off(1)), 4096);
	std::string seen;
	h.queue_io = [&seen](struct tq *tq, struct request *req) {
		char *b = (char *)request_buf(tq, req);
		CHECK(b != nullptr);
		if (b && req->op == W)
			seen.assign(b, req->len);
		else if (b)
			memset(b, 'r', req->len); /* a READ the target answers itself */
		req->result = req->len;
		return (int)QUEUE_IO_DONE;
	};
	h.start();
	h.request(1, W, 0, 4096);
	CHECK(seen == in);
	CHECK_EQ(h.result(1), 4096);
	h.request(2, R, 0, 4096);
	CHECK_EQ(h.result(2), 4096);
	std::string out(4096, 0);
	CHECK_EQ(pread(h.dev.ublkc_fd, &out[0], out.size(), user_copy_off(2)), 4096);
	CHECK(out == std::string(4096, 'r'));
	CHECK(h.stop());
	close(h.dev.ublkc_fd);
}

/* ---- teardown ---- */

/* The queue's loop is told to end with a RECV in flight on tag 0 (a socket that never answers). */
static void force_stop_with_a_recv_in_flight(harness &h)
{
	h.request(0, R, 0, 4096);
	h.q.force_stop = true;
	h.k.run(); /* the loop ends; teardown cancels everything and waits */
}

TEST(teardown_cancels_and_waits_for_members_in_flight)
{
	rig h(MODE_AUTO_LEASE, describes({{MEMBER_RECV, 1}}, QUEUE_IO_PENDING));
	force_stop_with_a_recv_in_flight(h);
	CHECK(!h.k.queue_ended);
	struct io_uring_sqe c = h.take(UD_CANCEL, 0);
	CHECK_EQ(c.cancel_flags, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
	h.complete(UD_MEMBER, 0, 0, -ECANCELED);
	CHECK(h.k.queue_ended);
	CHECK(!h.q.bufs_kept);
}

TEST(teardown_keeps_the_buffers_of_members_that_never_end)
{
	rig h(MODE_COPY, describes({{MEMBER_RECV, 1}}, QUEUE_IO_PENDING));
	void *buf = h.q.ios[0].buf;
	force_stop_with_a_recv_in_flight(h);
	h.k.run(); /* the wait times out */
	CHECK(h.k.queue_ended);
	CHECK(h.q.bufs_kept);
	CHECK_CONTAINS(queue_error(&h.q), "their buffers are kept");
	CHECK(h.q.ios[0].buf == buf);
	CHECK(h.stop());
	for (struct io &io : h.q.ios)
		free(io.buf); /* the test is the kernel: nothing writes into them any more */
}

TEST(options_a_read_of_a_key_the_target_does_not_declare_is_noted)
{
	static const char *const declared[] = {"rate", "name", "ranges", nullptr};
	struct target_config cfg;
	cfg.declared = declared;
	cfg.nums["rate"] = 7;
	cfg.strs["name"] = "x";
	cfg.lists["ranges"] = {1, 2};
	CHECK_EQ(cfg.num("rate", 0), 7);
	CHECK(cfg.str("name") && *cfg.str("name") == "x");
	CHECK(cfg.list("ranges") && cfg.list("ranges")->size() == 2);
	CHECK(cfg.undeclared.empty());
	/* Misspelt: absent, as before, but noted (device_open then fails the start). */
	CHECK_EQ(cfg.num("rte", 3), 3);
	CHECK(cfg.str("nme") == nullptr);
	CHECK_CONTAINS(cfg.undeclared, "rte");
}
