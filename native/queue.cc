/*
 * The queue thread: FETCH every tag, hand each fetched request to the target and the request engine
 * (request.cc), and COMMIT_AND_FETCH its result (ring.cc). Everything a queue does is submitted in batches: SQEs made while
 * draining one batch of completions go to the kernel in the next single io_uring_enter().
 *
 * Stopping never strands a request: a drain (device stop, or a queue failure) fails what the target holds
 * and what arrives after; before the ring goes, every member still in flight is cancelled and waited for,
 * so no buffer is freed under the kernel's feet.
 */
#include "queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* CQEs one request can cause besides its parked command: leader, unlease, two per member (SEND_ZC's
 * notification), and the target's own request-bound operations. */
#define CQES_PER_REQUEST (2 + 2 * MAX_MEMBERS + MAX_REQUEST_OPS)
#define MAX_CQ_ENTRIES 65536u /* IORING_MAX_CQ_ENTRIES */
#define NO_TAG 0xffffu

/* ---- what targets call ---- */

bool tq_draining(const struct tq *tq)
{
	return tq->q->draining;
}

uint64_t target_requests(const struct target *t)
{
	uint64_t sum = 0;
	for (unsigned i = 0; t->stats && i < t->nr_queues; i++)
		sum += t->stats[i].requests.load(std::memory_order_relaxed);
	return sum;
}

struct io_uring_sqe *tq_sqe(struct tq *tq, struct request *req, uint64_t cookie)
{
	struct queue *q = tq->q;
	struct io_uring_sqe *sqe = queue_sqe(q);
	q->target_ops++;
	/* A request-bound operation carries the request's generation: if the request ends first (a drain),
	 * its late CQE is recognised and dropped instead of reaching the tag's next request. */
	uint64_t ud = req ? ud_make(req->tag, UD_TARGET_REQ, cookie & 0xff, req->gen)
			  : ((cookie & 0xffff) | (uint64_t)UD_TARGET << 16 | (cookie >> 16) << 24);
	/* liburing 2.3's get_sqe clears nothing; its prep helpers leave user_data alone. */
	memset(sqe, 0, sizeof(*sqe));
	sqe->user_data = ud;
	return sqe;
}

int tq_set_file(struct tq *tq, unsigned file, int fd)
{
	/* Only the queue thread may touch its ring (SINGLE_ISSUER); operations in flight keep the old file. */
	int ret = io_uring_register_files_update(&tq->q->ring, file, &fd, 1);
	return ret < 0 ? ret : 0;
}

/* The engine ends a request the target holds: it fails, and the target is told, so that it never adds to
 * it, sends for it or receives into its buffer again (the tag's next request may own that buffer). */
static void end_held(struct queue *q, struct io *io)
{
	lease_release(q, io, -EIO);
	if (q->dev->tgt.ops->on_release)
		q->dev->tgt.ops->on_release(&q->tq, &io->req);
}

/* Drain: nothing is kept for later any more. What the target holds fails now, members it still waits on
 * are cancelled, and requests that arrive later are not held (handle_request). */
static void drain(struct queue *q)
{
	if (q->draining)
		return;
	q->draining = true;
	for (struct io &io : q->ios) {
		if (io.state != IO_SERVING || !io.held)
			continue;
		lease_cancel_members(q, &io);
		io.req.nr_members = io.submitted; /* nothing new goes out */
		end_held(q, &io);
	}
}

void queue_fail(struct tq *tq, const std::string &why)
{
	struct queue *q = tq->q;
	queue_set_error(q, why);
	if (q->failed)
		return;
	q->failed = true;
	drain(q);
	if (q->dev->on_queue_failed)
		q->dev->on_queue_failed();
}

int queue_complete_remote(struct queue *q, const struct remote_completion &c)
{
	{
		std::lock_guard<std::mutex> g(q->remote_lock);
		if (q->remote.size() >= q->dev->depth)
			return -EAGAIN;
		q->remote.push_back(c);
	}
	uint64_t one = 1;
	(void)!write(q->wake_fd, &one, sizeof(one));
	return 0;
}

void queue_request_drain(struct queue *q)
{
	q->stop_requested = true;
	uint64_t one = 1;
	(void)!write(q->wake_fd, &one, sizeof(one));
}

void queue_prepare_handover(struct queue *q)
{
	q->leaving = true;
}

void queue_request_handover(struct queue *q)
{
	q->leaving = true;
	q->handover = true;
	uint64_t one = 1;
	(void)!write(q->wake_fd, &one, sizeof(one));
}

/* ---- the request cycle ---- */

static void start_request(struct queue *q, struct io *io)
{
	struct request *req = &io->req;
	if (q->failed) {
		queue_commit(q, io, -EIO);
		return;
	}
	req->open = true;
	int how = q->dev->tgt.ops->queue_io(&q->tq, req);
	if (how == QUEUE_IO_PENDING) {
		io->held = true;
		lease_run(q, io);
		/* Stopping: a request may not wait for something that will never come. */
		if (q->draining && io->held && io->state == IO_SERVING)
			end_held(q, io);
		return;
	}
	lease_release(q, io, req->result);
}

/* A request arrived on this tag: serve it now, or after others if the CQ has no room for it yet. */
static void handle_request(struct queue *q, struct io *io)
{
	if (q->handover.load()) {
		/* Not started, so not ours to finish: the kernel re-issues it to the next server once this
		 * one has closed the device. */
		io->state = IO_DEAD;
		return;
	}
	const struct ublksrv_io_desc *d = &q->descs[io->req.tag];
	struct request *req = &io->req;
	req->op = d->op_flags & 0xff;
	req->flags = d->op_flags & ~0xffu;
	req->offset = d->start_sector << 9;
	req->len = d->nr_sectors << 9;
	req->gen++;
	req->nr_members = 0;
	req->result = 0;
	req->copy = false;
	req->overflow = false;
	io->state = IO_SERVING;
	io->err = 0;
	io->tresult = 0;
	io->nr_cov = 0;
	io->submitted = 0;
	io->inflight = 0;
	io->held = false;
	io->buf_used = false;
	io->recommitted = false;
	q->nr_serving++;
	if (q->nr_serving > q->max_serving) {
		io->backlog_next = NO_TAG;
		if (q->backlog_head == NO_TAG)
			q->backlog_head = io->req.tag;
		else
			q->ios[q->backlog_tail].backlog_next = io->req.tag;
		q->backlog_tail = io->req.tag;
		return;
	}
	start_request(q, io);
}

static void start_backlog(struct queue *q)
{
	/* nr_serving counts the backlog too: what is started is nr_serving minus what waits. */
	unsigned waiting = 0;
	for (uint16_t t = q->backlog_head; t != NO_TAG; t = q->ios[t].backlog_next)
		waiting++;
	while (q->backlog_head != NO_TAG && q->nr_serving - waiting < q->max_serving) {
		struct io *io = &q->ios[q->backlog_head];
		q->backlog_head = io->backlog_next;
		waiting--;
		start_request(q, io);
	}
}

static void handle_cmd_cqe(struct queue *q, struct io *io, int res)
{
	if (res == UBLK_IO_RES_OK) {
		handle_request(q, io);
		return;
	}
	if (res == UBLK_IO_RES_ABORT || res == -ECANCELED) {
		/* The kernel is done with this tag (STOP_DEV, or the ring is going away). */
		if (io->state != IO_DEAD)
			q->nr_dead++;
		io->state = IO_DEAD;
		return;
	}
	std::string what = io->state == IO_FETCHING ? "FETCH" : "COMMIT";
	queue_set_error(q, "tag " + std::to_string(io->req.tag) + ": " + what + " refused: " + strerror(-res));
	if (io->state == IO_COMMITTING && !io->recommitted) {
		/* The kernel still counts the request as ours: complete it with an error rather than leave it
		 * to hang STOP_DEV. */
		io->recommitted = true;
		q->nr_serving++;
		queue_commit(q, io, -EIO);
		return;
	}
	io->state = IO_DEAD;
	q->nr_dead++;
	queue_fail(&q->tq, queue_error(q));
}

static void arm_wake(struct queue *q)
{
	struct io_uring_sqe *sqe = queue_sqe(q);
	/* A read, not a poll: it consumes the counter, so the eventfd is quiet again until the next wake. */
	io_uring_prep_read(sqe, q->wake_fd, &q->wake_val, sizeof(q->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(0, UD_WAKE, 0));
}

static void on_wake(struct queue *q, int res)
{
	{
		std::lock_guard<std::mutex> g(q->remote_lock);
		q->remote_taken.swap(q->remote);
	}
	const struct target_ops *ops = q->dev->tgt.ops;
	for (const struct remote_completion &c : q->remote_taken) {
		struct io *io = &q->ios[c.tag % q->dev->depth];
		/* Only for the request it was meant for, while the target still holds it. */
		if (io->req.gen != c.gen || !io->held || io->state != IO_SERVING)
			continue;
		if (ops->on_remote)
			ops->on_remote(&q->tq, &io->req, c);
		else
			request_complete(&q->tq, &io->req, c.result);
	}
	q->remote_taken.clear();
	if (q->stop_requested.load())
		drain(q);
	/* A cancelled read (teardown) is not re-armed. */
	if (!q->force_stop.load() && res != -ECANCELED)
		arm_wake(q);
}

static void on_target_cqe(struct queue *q, uint64_t ud, const struct io_uring_cqe *cqe, bool bound)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		q->target_ops--;
	const struct target_ops *ops = q->dev->tgt.ops;
	if (!bound) {
		ops->on_cqe(&q->tq, nullptr, (ud & 0xffff) | (ud >> 24) << 16, cqe);
		return;
	}
	struct io *io = &q->ios[(ud & 0xffff) % q->dev->depth];
	/* Its request is gone, or no longer held by the target (drained): a late CQE never reaches the
	 * tag's next request, nor a request the target has let go. */
	if (io->req.gen != (uint32_t)(ud >> 32) || io->state != IO_SERVING || !io->held)
		return;
	ops->on_cqe(&q->tq, &io->req, (ud >> 24) & 0xff, cqe);
}

static void dispatch_cqe(struct queue *q, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	enum ud_kind kind = (enum ud_kind)((ud >> 16) & 0xff);
	struct io *io = &q->ios[(ud & 0xffff) % q->dev->depth];

	switch (kind) {
	case UD_CMD:
		handle_cmd_cqe(q, io, cqe->res);
		break;
	case UD_LEADER:
		lease_on_leader(q, io, cqe->res);
		break;
	case UD_MEMBER:
		/* Its request is still there (the lease counts every member in flight); the generation makes
		 * sure no completion can ever reach the tag's next request. */
		if (io->state == IO_SERVING && io->req.gen == (uint32_t)(ud >> 32))
			lease_on_member(q, io, (ud >> 24) & 0xff, cqe);
		break;
	case UD_UNLEASE:
		/* Only failures post (CQE_SKIP_SUCCESS): the slot stays taken and the next lease on it fails
		 * cleanly with -EBUSY rather than hanging. */
		queue_set_error(q, "UNREGISTER_IO_BUF refused: " + std::string(strerror(-cqe->res)));
		break;
	case UD_WAKE:
		on_wake(q, cqe->res);
		break;
	case UD_TARGET:
	case UD_TARGET_REQ:
		on_target_cqe(q, ud, cqe, kind == UD_TARGET_REQ);
		break;
	case UD_CANCEL:
		break; /* a cancellation that found nothing to cancel: the member completed meanwhile */
	}
}

/* Handle every CQE that is there; returns how many. */
static unsigned reap(struct queue *q)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	io_uring_for_each_cqe(&q->ring, head, cqe)
	{
		dispatch_cqe(q, cqe);
		n++;
	}
	io_uring_cq_advance(&q->ring, n);
	return n;
}

static int setup_ring(struct queue *q)
{
	const struct device_ctx *dev = q->dev;
	unsigned entries = 1;
	while (entries < 2u * dev->depth)
		entries <<= 1;
	if (entries > 4096)
		entries = 4096;
	/* The CQ holds every parked command, the wake, the target's queue-wide operations and the worst
	 * case of every request served at once; past the kernel's CQ limit fewer requests are served at
	 * once (the rest wait in the backlog), so no CQ overflow can end a queue. */
	unsigned fixed = dev->depth + 2 + dev->tgt.ops->queue_ops;
	uint64_t want = fixed + (uint64_t)dev->depth * CQES_PER_REQUEST;
	unsigned cq = entries * 2;
	while (cq < want && cq < MAX_CQ_ENTRIES)
		cq <<= 1;
	q->max_serving = cq >= want ? dev->depth : (cq - fixed) / CQES_PER_REQUEST;
	struct io_uring_params p = {};
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
		  IORING_SETUP_DEFER_TASKRUN;
	p.cq_entries = cq;
	int ret = io_uring_queue_init_params(entries, &q->ring, &p);
	if (ret == -EINVAL) {
		/* Kernels before 6.1 lack deferred task work. */
		p = {};
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = cq;
		ret = io_uring_queue_init_params(entries, &q->ring, &p);
	}
	if (ret < 0) {
		queue_set_error(q, std::string("io_uring_queue_init: ") + strerror(-ret));
		return ret;
	}
	q->ring_ready = true;

	std::vector<int> files;
	files.push_back(dev->ublkc_fd);
	for (int fd : dev->tgt.cfg.fds)
		files.push_back(fd);
	ret = io_uring_register_files(&q->ring, files.data(), files.size());
	if (ret < 0) {
		queue_set_error(q, std::string("io_uring_register_files: ") + strerror(-ret));
		return ret;
	}
	if (dev->mode == MODE_LEASE || dev->mode == MODE_AUTO_LEASE) {
		/* Slots [0, depth) for the driver's auto leases, [depth, 2*depth) for our own leases. */
		ret = io_uring_register_buffers_sparse(&q->ring, 2u * dev->depth);
		if (ret < 0) {
			queue_set_error(q, std::string("io_uring_register_buffers_sparse: ") + strerror(-ret));
			return ret;
		}
	}
	return 0;
}

static int setup_ios(struct queue *q)
{
	const struct device_ctx *dev = q->dev;
	q->ios.resize(dev->depth);
	q->remote.reserve(dev->depth);
	q->remote_taken.reserve(dev->depth);
	q->backlog_head = q->backlog_tail = NO_TAG;
	for (struct stream &s : q->streams)
		s = {STREAM_END, STREAM_END, false};
	for (uint16_t tag = 0; tag < dev->depth; tag++) {
		struct io *io = &q->ios[tag];
		*io = {};
		io->req.q_id = q->q_id;
		io->req.tag = tag;
		io->state = IO_FETCHING;
		if (dev->mode == MODE_COPY || dev->mode == MODE_USER_COPY) {
			if (!dev->tgt.cfg.bufs.empty())
				io->buf = dev->tgt.cfg.bufs[(size_t)q->q_id * dev->depth + tag];
			else if (posix_memalign(&io->buf, 4096, dev->max_io_bytes)) {
				queue_set_error(q, "cannot allocate the copy buffers");
				return -ENOMEM;
			}
		}
	}
	q->tq = {q, &dev->tgt, nullptr, q->q_id, dev->depth};
	if (dev->tgt.ops->queue_init) {
		int ret = dev->tgt.ops->queue_init(&q->tq);
		if (ret < 0) {
			queue_set_error(q, std::string("target queue_init: ") + strerror(-ret));
			return ret;
		}
	}
	q->target_ready = true;
	return 0;
}

static bool members_in_flight(const struct queue *q)
{
	if (q->target_ops > 0)
		return true;
	for (const struct io &io : q->ios)
		if (io.inflight > 0 || io.leasing)
			return true;
	return false;
}

/* Before the ring goes: cancel and wait for every operation that could still touch our buffers (a
 * closed ring's requests run on in the kernel). Bounded; what does not end in time keeps its buffers. */
static bool quiesce(struct queue *q)
{
	if (!members_in_flight(q))
		return true;
	struct io_uring_sqe *sqe = queue_sqe(q);
	io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, ud_make(0, UD_CANCEL, 0));
	q->draining = true;
	struct __kernel_timespec ts = {5, 0};
	while (members_in_flight(q)) {
		struct io_uring_cqe *cqe;
		io_uring_submit(&q->ring);
		if (io_uring_wait_cqe_timeout(&q->ring, &cqe, &ts) == -ETIME)
			break;
		reap(q);
	}
	io_uring_submit(&q->ring);
	return !members_in_flight(q);
}

static void teardown(struct queue *q)
{
	bool quiet = !q->ring_ready || quiesce(q);
	if (q->ring_ready)
		io_uring_queue_exit(&q->ring); /* cancels whatever commands are still armed */
	q->ring_ready = false;
	if (q->target_ready && q->dev->tgt.ops->queue_deinit)
		q->dev->tgt.ops->queue_deinit(&q->tq);
	q->target_ready = false;
	if (!quiet) {
		/* The kernel may still write into these: leaking them is the safe choice. */
		queue_set_error(q, "members still in flight after 5 s at teardown; their buffers are kept");
		q->bufs_kept = true;
		return;
	}
	if (q->dev->tgt.cfg.bufs.empty()) /* the host's are its own to free */
		for (struct io &io : q->ios)
			free(io.buf);
	q->ios.clear();
}

/* Handing over with no request left: the target's own last work (queue_settle) ends before the queue. */
static bool settling(struct queue *q)
{
	const struct target_ops *ops = q->dev->tgt.ops;
	return q->leaving.load() && ops->queue_settle && ops->queue_settle(&q->tq);
}

/* After the first submit: a FETCH the kernel refused has already posted its CQE. Seeing it here turns
 * into a failed add at once, instead of a START_DEV that waits for that tag forever. */
static int check_fetches(struct queue *q)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int ret = 0;
	io_uring_get_events(&q->ring);
	io_uring_for_each_cqe(&q->ring, head, cqe)
	{
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		if (((ud >> 16) & 0xff) == UD_CMD && cqe->res < 0 && ret == 0) {
			queue_set_error(q, "the kernel refused FETCH of tag " + std::to_string(ud & 0xffff) + ": " +
						   strerror(-cqe->res));
			ret = cqe->res;
		}
		n++;
	}
	if (ret == 0)
		return 0;
	io_uring_cq_advance(&q->ring, n);
	return ret;
}

void queue_run(struct queue *q, const std::function<void()> &ready)
{
	int ret = setup_ring(q);
	if (ret == 0)
		ret = setup_ios(q);
	if (ret == 0) {
		for (struct io &io : q->ios)
			queue_prep_cmd(q, &io, UBLK_U_IO_FETCH_REQ, 0);
		arm_wake(q);
		ret = io_uring_submit(&q->ring);
		if (ret < 0)
			queue_set_error(q, std::string("submitting FETCH: ") + strerror(-ret));
		else
			ret = check_fetches(q);
	}
	ready();
	if (ret < 0) {
		teardown(q);
		return;
	}

	/* Serve until every tag has been aborted (handing over: until nothing started is left and the
	 * target has settled) and no request is left half-served. */
	while (!q->force_stop.load() && ((!q->handover.load() && q->nr_dead < q->dev->depth) || q->nr_serving > 0 || settling(q))) {
		ret = io_uring_submit_and_wait(&q->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			queue_fail(&q->tq, std::string("io_uring_enter: ") + strerror(-ret));
			break;
		}
		reap(q);
		if (q->backlog_head != NO_TAG)
			start_backlog(q);
		if (q->dev->tgt.ops->queue_idle)
			q->dev->tgt.ops->queue_idle(&q->tq);
	}
	/* Submit the last commits so the kernel can complete them before the ring goes. */
	io_uring_submit(&q->ring);
	teardown(q);
}
