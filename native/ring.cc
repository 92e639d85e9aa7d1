/*
 * The queue's ring as the queue thread and the request engine both use it: SQEs, the FETCH and
 * COMMIT_AND_FETCH commands, and the queue's first error. It calls neither of them.
 */
#include "queue.h"

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

void queue_set_error(struct queue *q, const std::string &msg)
{
	std::lock_guard<std::mutex> g(q->error_lock);
	if (q->error.empty())
		q->error = msg;
}

std::string queue_error(struct queue *q)
{
	std::lock_guard<std::mutex> g(q->error_lock);
	return q->error;
}

void queue_prep_cmd(struct queue *q, struct io *io, uint32_t op, int32_t result)
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
	io->state = IO_COMMITTING;
	q->nr_serving--;
	queue_prep_cmd(q, io, UBLK_U_IO_COMMIT_AND_FETCH_REQ, result);
}
