#include "harness.h"

#include <errno.h>

static harness *H(const struct tq *tq)
{
	return static_cast<harness *>(tq->t->priv);
}

static int h_queue_io(struct tq *tq, struct request *req)
{
	harness *h = H(tq);
	if (h->queue_io)
		return h->queue_io(tq, req);
	req->result = 0;
	return QUEUE_IO_DONE;
}

static enum member_fold h_on_member(struct tq *tq, struct request *req, unsigned idx, int res)
{
	harness *h = H(tq);
	h->member_calls.push_back({req->tag, idx, res});
	return h->on_member ? h->on_member(tq, req, idx, res) : FOLD_DEFAULT;
}

static void h_on_release(struct tq *tq, struct request *req)
{
	harness *h = H(tq);
	h->released.push_back(req->tag);
	if (h->on_release)
		h->on_release(tq, req);
}

static void h_on_cqe(struct tq *tq, struct request *req, uint64_t cookie, const struct io_uring_cqe *cqe)
{
	harness *h = H(tq);
	if (h->on_cqe)
		h->on_cqe(tq, req, cookie, cqe);
}

void check_rw(const char *file, int line, const struct io_uring_sqe &s, unsigned opcode, int fd, uint64_t addr, uint32_t len,
	      uint64_t off)
{
	auto show = [](unsigned o, int f, uint64_t a, uint32_t l, uint64_t of) {
		return "{op " + std::to_string(o) + ", fd " + std::to_string(f) + ", addr " + std::to_string(a) + ", len " +
		       std::to_string(l) + ", off " + std::to_string(of) + "}";
	};
	if (s.opcode != opcode || s.fd != fd || s.addr != addr || s.len != len || s.off != off)
		test_fail(file, line, "SQE " + show(s.opcode, s.fd, s.addr, s.len, s.off) + " != " + show(opcode, fd, addr, len, off));
}

harness::harness(enum data_mode mode, uint16_t depth, uint32_t max_io, const struct target_ops *real)
{
	ops.name = "scripted";
	ops.queue_io = h_queue_io;
	ops.on_member = h_on_member;
	ops.on_release = h_on_release;
	ops.on_cqe = h_on_cqe;
	ops.queue_ops = 2;
	dev.dev_id = 0;
	dev.nr_queues = 1;
	dev.depth = depth;
	dev.max_io_bytes = max_io;
	dev.mode = mode;
	dev.ublkc_fd = -1;
	dev.tgt.ops = real ? real : &ops;
	dev.tgt.cfg.declared = dev.tgt.ops->options;
	dev.stats.reset(new queue_stats[1]());
	dev.tgt.stats = dev.stats.get();
	dev.tgt.priv = this;
	dev.on_queue_failed = [this] { queue_failed_cb = true; };
	descs.assign(depth, ublksrv_io_desc{});
	q.dev = &dev;
	q.q_id = 0;
	q.stats = &dev.stats[0];
	q.descs = descs.data();
	q.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

harness::~harness()
{
	stop();
	close(q.wake_fd);
	/* Every option a real target read is one its ops table declares. */
	if (!dev.tgt.cfg.undeclared.empty())
		test_fail(__FILE__, __LINE__, dev.tgt.ops->name + std::string(" read option \"") + dev.tgt.cfg.undeclared + "\", not in its .options");
}

void harness::start()
{
	g_kernel = &k;
	k.queue_turn = true;
	th = std::thread([this] {
		queue_run(&q, [] {});
		std::lock_guard<std::mutex> g(k.mu);
		k.queue_ended = true;
		k.cv.notify_all();
	});
	std::unique_lock<std::mutex> g(k.mu);
	k.cv.wait(g, [this] { return !k.queue_turn || k.queue_ended; });
}

void harness::arrive(uint16_t tag, uint8_t op, uint64_t off, uint32_t len, uint32_t flags)
{
	descs[tag] = {op | flags, len >> 9, off >> 9, 0};
	struct io_uring_sqe s = take(UD_CMD, tag);
	k.post(s.user_data, UBLK_IO_RES_OK);
}

void harness::request(uint16_t tag, uint8_t op, uint64_t off, uint32_t len, uint32_t flags)
{
	arrive(tag, op, off, len, flags);
	k.run();
}

static bool matches(const struct io_uring_sqe &s, unsigned kind, int tag, int index)
{
	return ud_kind_of(s.user_data) == kind && (tag < 0 || (int)ud_tag(s.user_data) == tag) &&
	       (index < 0 || (int)ud_index(s.user_data) == index);
}

struct io_uring_sqe harness::take(unsigned kind, int tag, int index)
{
	for (auto it = k.pending.begin(); it != k.pending.end(); ++it) {
		if (matches(*it, kind, tag, index)) {
			struct io_uring_sqe s = *it;
			k.pending.erase(it);
			return s;
		}
	}
	test_fail(__FILE__, __LINE__,
		  "no SQE of kind " + std::to_string(kind) + " tag " + std::to_string(tag) + " index " + std::to_string(index));
	return io_uring_sqe{};
}

unsigned harness::count(unsigned kind, int tag) const
{
	unsigned n = 0;
	for (const struct io_uring_sqe &s : k.pending)
		n += matches(s, kind, tag, -1);
	return n;
}

unsigned harness::logged(unsigned kind, int tag) const
{
	unsigned n = 0;
	for (const struct io_uring_sqe &s : k.log)
		n += matches(s, kind, tag, -1);
	return n;
}

void harness::complete(unsigned kind, int tag, int index, int32_t res, uint32_t flags)
{
	answer(take(kind, tag, index), res, flags);
}

void harness::answer(const struct io_uring_sqe &s, int32_t res, uint32_t flags)
{
	k.post(s.user_data, res, flags);
	k.run();
}

void harness::wake()
{
	complete(UD_WAKE, -1, -1, 8);
}

bool harness::committed(uint16_t tag, int32_t *res) const
{
	for (const struct io_uring_sqe &s : k.pending) {
		if (matches(s, UD_CMD, tag, -1) && sqe_cmd_op(s) == UBLK_U_IO_COMMIT_AND_FETCH_REQ) {
			if (res)
				*res = sqe_io_cmd(s).result;
			return true;
		}
	}
	return false;
}

int32_t harness::result(uint16_t tag)
{
	int32_t r = 0;
	if (!committed(tag, &r))
		test_fail(__FILE__, __LINE__, "tag " + std::to_string(tag) + " was not committed");
	return committed(tag) ? r : INT32_MIN;
}

void harness::post_aborts()
{
	for (auto it = k.pending.begin(); it != k.pending.end();) {
		if (ud_kind_of(it->user_data) == UD_CMD) {
			k.post(it->user_data, UBLK_IO_RES_ABORT);
			it = k.pending.erase(it);
		} else {
			++it;
		}
	}
}

void harness::abort_parked()
{
	post_aborts();
	k.run();
}

bool harness::stop()
{
	if (stopped || !th.joinable())
		return true;
	stopped = true;
	bool clean = true;
	for (int round = 0; !k.queue_ended; round++) {
		post_aborts();
		if (round > 0) {
			/* Requests still half-served: end the loop as device_force_stop does. */
			clean = false;
			q.force_stop = true;
		}
		k.run();
	}
	th.join();
	g_kernel = nullptr;
	return clean;
}
