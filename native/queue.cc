/*
 * The queue thread: FETCH every tag, turn each fetched request into a lease (lease.cc), and
 * COMMIT_AND_FETCH its result. Everything a queue does is submitted in batches: SQEs made while
 * draining one batch of completions go to the kernel in the next single io_uring_enter().
 */
#include "queue.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct io_uring_sqe *queue_sqe(struct queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	while (!sqe) {
		/* SQ full: hand what we have to the kernel and take a fresh slot. */
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
	}
	return sqe;
}

static void prep_io_cmd(struct queue *q, struct io *io, uint32_t op, int32_t result)
{
	const struct device_ctx *dev = q->dev;
	struct ublksrv_io_cmd cmd = {};
	cmd.q_id = q->q_id;
	cmd.tag = io->req.tag;
	cmd.result = result;
	if (dev->mode == MODE_COPY)
		cmd.addr = (uint64_t)(uintptr_t)io->buf;
	struct io_uring_sqe *sqe = queue_sqe(q);
	ublk_prep_cmd(sqe, 0, op, &cmd, sizeof(cmd), sizeof(*sqe));
	sqe->flags = IOSQE_FIXED_FILE;
	/* Auto-lease: tell the driver which slot to lease the next request of this tag into. */
	if (dev->mode == MODE_AUTO_LEASE)
		sqe->addr = auto_slot(q, io->req.tag) | (uint64_t)UBLK_AUTO_BUF_REG_FALLBACK << 16;
	io_uring_sqe_set_data64(sqe, ud_make(io->req.tag, UD_CMD, 0));
}

void queue_commit(struct queue *q, struct io *io, int32_t result)
{
	io->serving = false;
	q->nr_serving--;
	prep_io_cmd(q, io, UBLK_U_IO_COMMIT_AND_FETCH_REQ, result);
}

/* A request arrived on this tag: describe it to the target, then lease and serve it. */
static void handle_request(struct queue *q, struct io *io)
{
	const struct ublksrv_io_desc *d = &q->descs[io->req.tag];
	struct request *req = &io->req;
	req->op = d->op_flags & 0xff;
	req->flags = d->op_flags & ~0xffu;
	req->offset = d->start_sector << 9;
	req->len = d->nr_sectors << 9;
	req->nr_members = 0;
	req->result = 0;
	io->err = 0;
	io->serving = true;
	q->nr_serving++;
	q->dev->tgt.ops->queue_io(&q->dev->tgt, req);
	lease_start(q, io, (req->flags & UBLK_IO_F_NEED_REG_BUF) != 0);
}

static void handle_cmd_cqe(struct queue *q, struct io *io, int res)
{
	if (res == UBLK_IO_RES_OK) {
		handle_request(q, io);
		return;
	}
	/* ABORT, cancellation, or a rejected command: this tag is finished. A rejection should never happen;
	 * record it for the server's log rather than spin on a resend. */
	if (res != UBLK_IO_RES_ABORT && res != -ECANCELED && q->error.empty())
		q->error = "tag " + std::to_string(io->req.tag) + ": FETCH/COMMIT refused: " + strerror(-res);
	if (!io->dead) {
		io->dead = true;
		q->nr_dead++;
	}
}

static void arm_wake(struct queue *q)
{
	struct io_uring_sqe *sqe = queue_sqe(q);
	io_uring_prep_poll_add(sqe, q->wake_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, ud_make(0, UD_WAKE, 0));
}

static int setup_ring(struct queue *q)
{
	const struct device_ctx *dev = q->dev;
	unsigned entries = 1;
	while (entries < 2u * dev->depth)
		entries <<= 1;
	if (entries > 4096)
		entries = 4096;
	struct io_uring_params p = {};
	/* Members of every tag plus the armed commands must fit in the CQ. */
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
		  IORING_SETUP_DEFER_TASKRUN;
	p.cq_entries = entries * 4;
	int ret = io_uring_queue_init_params(entries, &q->ring, &p);
	if (ret == -EINVAL) {
		/* Kernels before 6.1 lack deferred task work. */
		p = {};
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, &q->ring, &p);
	}
	if (ret < 0) {
		q->error = std::string("io_uring_queue_init: ") + strerror(-ret);
		return ret;
	}
	q->ring_ready = true;

	std::vector<int> files;
	files.push_back(dev->ublkc_fd);
	for (int fd : dev->tgt.cfg.fds)
		files.push_back(fd);
	ret = io_uring_register_files(&q->ring, files.data(), files.size());
	if (ret < 0) {
		q->error = std::string("io_uring_register_files: ") + strerror(-ret);
		return ret;
	}
	if (dev->mode == MODE_LEASE || dev->mode == MODE_AUTO_LEASE) {
		/* Slots [0, depth) for the driver's auto leases, [depth, 2*depth) for our own leases. */
		ret = io_uring_register_buffers_sparse(&q->ring, 2u * dev->depth);
		if (ret < 0) {
			q->error = std::string("io_uring_register_buffers_sparse: ") + strerror(-ret);
			return ret;
		}
	}
	return 0;
}

static int setup_ios(struct queue *q)
{
	const struct device_ctx *dev = q->dev;
	q->ios.resize(dev->depth);
	for (uint16_t tag = 0; tag < dev->depth; tag++) {
		struct io *io = &q->ios[tag];
		*io = {};
		io->req.q_id = q->q_id;
		io->req.tag = tag;
		if (dev->mode == MODE_COPY || dev->mode == MODE_USER_COPY) {
			if (posix_memalign(&io->buf, 4096, dev->max_io_bytes)) {
				q->error = "out of memory for copy buffers";
				return -ENOMEM;
			}
		}
	}
	return 0;
}

static void teardown(struct queue *q)
{
	if (q->ring_ready)
		io_uring_queue_exit(&q->ring); /* cancels whatever commands are still armed */
	q->ring_ready = false;
	for (struct io &io : q->ios)
		free(io.buf);
	q->ios.clear();
}

static void dispatch_cqe(struct queue *q, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	uint16_t tag = ud & 0xffff;
	enum ud_kind kind = (enum ud_kind)((ud >> 16) & 0xff);
	unsigned member = (ud >> 24) & 0xff;
	struct io *io = &q->ios[tag];

	switch (kind) {
	case UD_CMD:
		handle_cmd_cqe(q, io, cqe->res);
		break;
	case UD_LEADER:
		lease_on_leader(q, io, cqe->res);
		break;
	case UD_MEMBER:
		lease_on_member(q, io, member, cqe->res);
		break;
	case UD_UNLEASE:
		/* Only failures post (CQE_SKIP_SUCCESS): the slot stays taken and the next lease on it fails
		 * cleanly with -EBUSY rather than hanging. */
		if (q->error.empty())
			q->error = "UNREGISTER_IO_BUF refused: " + std::string(strerror(-cqe->res));
		break;
	case UD_WAKE:
		if (!q->force_stop.load())
			arm_wake(q);
		break;
	}
}

void queue_run(struct queue *q, const std::function<void()> &ready)
{
	int ret = setup_ring(q);
	if (ret == 0)
		ret = setup_ios(q);
	if (ret == 0) {
		for (struct io &io : q->ios)
			prep_io_cmd(q, &io, UBLK_U_IO_FETCH_REQ, 0);
		arm_wake(q);
		ret = io_uring_submit(&q->ring);
		if (ret < 0)
			q->error = std::string("submitting FETCH: ") + strerror(-ret);
		else
			ret = 0;
	}
	ready();
	if (ret < 0) {
		teardown(q);
		return;
	}

	/* Serve until every tag has been aborted and no request is left half-served. */
	while (!q->force_stop.load() && (q->nr_dead < q->dev->depth || q->nr_serving > 0)) {
		ret = io_uring_submit_and_wait(&q->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			q->error = std::string("io_uring_enter: ") + strerror(-ret);
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&q->ring, head, cqe)
		{
			dispatch_cqe(q, cqe);
			n++;
		}
		io_uring_cq_advance(&q->ring, n);
	}
	/* Submit the last commits so the kernel can complete them before the ring goes. */
	io_uring_submit(&q->ring);
	teardown(q);
}
