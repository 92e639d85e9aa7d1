/*
 * The lease: how one request's buffer is lent to its members and handed back.
 *
 *   leader   UBLK_U_IO_REGISTER_IO_BUF puts the request's pages into this ring's sparse buffer table
 *            (lease mode; in auto-lease mode the driver did it before the request reached us)
 *   members  the target's backend operations, all submitted at once, unlinked, so a fan-out runs in
 *            parallel; each uses the leased slot as a fixed buffer (READ_FIXED / WRITE_FIXED)
 *   fold     short transfers are continued, the first error wins, otherwise the full length
 *   hand-back UBLK_U_IO_UNREGISTER_IO_BUF (lease mode) and COMMIT_AND_FETCH in the same batch; under
 *            auto-lease the commit itself hands the buffer back
 *
 * Copy and user-copy modes run the same members on a private per-tag buffer instead.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "queue.h"

static bool uses_buffer(const struct request *req)
{
	for (unsigned i = 0; i < req->nr_members; i++)
		if (req->members[i].kind == MEMBER_READ || req->members[i].kind == MEMBER_WRITE)
			return true;
	return false;
}

static uint64_t user_copy_offset(const struct request *req)
{
	return UBLKSRV_IO_BUF_OFFSET + ((uint64_t)req->q_id << UBLK_QID_OFF) + ((uint64_t)req->tag << UBLK_TAG_OFF);
}

/* Move the whole request between our buffer and the kernel's pages (user-copy mode); loops on short
 * transfers. Runs on the queue thread: it is a memory copy, not backend I/O. */
static int user_copy(struct queue *q, struct io *io, bool to_kernel)
{
	size_t done = 0, len = io->req.len;
	while (done < len) {
		char *p = (char *)io->buf + done;
		off_t off = (off_t)(user_copy_offset(&io->req) + done);
		ssize_t n = to_kernel ? pwrite(q->dev->ublkc_fd, p, len - done, off)
				      : pread(q->dev->ublkc_fd, p, len - done, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += n;
	}
	return 0;
}

/* REGISTER_IO_BUF or UNREGISTER_IO_BUF of this tag's lease slot. */
static struct io_uring_sqe *prep_lease_cmd(struct queue *q, struct io *io, uint32_t op, enum ud_kind kind)
{
	struct ublksrv_io_cmd cmd = {};
	cmd.q_id = q->q_id;
	cmd.tag = io->req.tag;
	cmd.addr = lease_slot(q, io->req.tag);
	struct io_uring_sqe *sqe = queue_sqe(q);
	ublk_prep_cmd(sqe, 0, op, &cmd, sizeof(cmd), sizeof(*sqe));
	sqe->flags = IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, ud_make(io->req.tag, kind, 0));
	return sqe;
}

static void submit_member(struct queue *q, struct io *io, unsigned i)
{
	const struct member *m = &io->req.members[i];
	struct io_uring_sqe *sqe = queue_sqe(q);
	bool leased = q->dev->mode == MODE_LEASE || q->dev->mode == MODE_AUTO_LEASE;
	int slot = io->leased ? lease_slot(q, io->req.tag) : auto_slot(q, io->req.tag);

	switch (m->kind) {
	case MEMBER_READ:
	case MEMBER_WRITE: {
		bool rd = m->kind == MEMBER_READ;
		if (leased) {
			/* With a fixed buffer, addr is an offset inside the leased request, not a pointer. */
			void *off = (void *)(uintptr_t)m->buf_off;
			if (rd)
				io_uring_prep_read_fixed(sqe, m->file, off, m->len, m->file_off, slot);
			else
				io_uring_prep_write_fixed(sqe, m->file, off, m->len, m->file_off, slot);
		} else {
			char *p = (char *)io->buf + m->buf_off;
			if (rd)
				io_uring_prep_read(sqe, m->file, p, m->len, m->file_off);
			else
				io_uring_prep_write(sqe, m->file, p, m->len, m->file_off);
		}
		sqe->rw_flags = m->rw_flags;
		break;
	}
	case MEMBER_FSYNC:
		io_uring_prep_fsync(sqe, m->file, IORING_FSYNC_DATASYNC);
		break;
	case MEMBER_FALLOCATE:
		io_uring_prep_fallocate(sqe, m->file, m->mode, m->file_off, m->len);
		break;
	}
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, ud_make(io->req.tag, UD_MEMBER, i));
}

static void submit_members(struct queue *q, struct io *io)
{
	io->pending = io->req.nr_members;
	for (unsigned i = 0; i < io->req.nr_members; i++)
		submit_member(q, io, i);
}

/* Every member is done: fold, hand the buffer back, commit. */
static void lease_finish(struct queue *q, struct io *io)
{
	struct request *req = &io->req;
	int32_t result = io->err;
	if (result == 0)
		result = (req->op == UBLK_IO_OP_READ || req->op == UBLK_IO_OP_WRITE) ? (int32_t)req->len : 0;
	if (result > 0 && req->op == UBLK_IO_OP_READ && q->dev->mode == MODE_USER_COPY) {
		int ret = user_copy(q, io, true);
		if (ret < 0)
			result = ret;
	}
	if (io->leased) {
		/* Submitted before the commit in the same batch: the slot is free when the tag's next
		 * request asks for a lease. */
		prep_lease_cmd(q, io, UBLK_U_IO_UNREGISTER_IO_BUF, UD_UNLEASE)->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io->leased = false;
	}
	queue_commit(q, io, result);
}

void lease_start(struct queue *q, struct io *io, bool need_manual_lease)
{
	struct request *req = &io->req;
	if (req->nr_members == 0) {
		queue_commit(q, io, req->result);
		return;
	}
	enum data_mode mode = q->dev->mode;
	if (uses_buffer(req) && (mode == MODE_LEASE || (mode == MODE_AUTO_LEASE && need_manual_lease))) {
		/* The leader: members can only be issued once its CQE says the slot holds our pages,
		 * which is what lets them run in parallel instead of in one hard-linked chain. */
		prep_lease_cmd(q, io, UBLK_U_IO_REGISTER_IO_BUF, UD_LEADER);
		return;
	}
	if (mode == MODE_USER_COPY && req->op == UBLK_IO_OP_WRITE && uses_buffer(req)) {
		int ret = user_copy(q, io, false);
		if (ret < 0) {
			queue_commit(q, io, ret);
			return;
		}
	}
	submit_members(q, io);
}

void lease_on_leader(struct queue *q, struct io *io, int res)
{
	if (res < 0) {
		queue_commit(q, io, res);
		return;
	}
	io->leased = true;
	submit_members(q, io);
}

void lease_on_member(struct queue *q, struct io *io, unsigned i, int res)
{
	struct member *m = &io->req.members[i];
	bool rw = m->kind == MEMBER_READ || m->kind == MEMBER_WRITE;
	if (rw && res > 0 && (uint32_t)res < m->len) {
		/* A short transfer is not the whole transfer: continue where it stopped. */
		m->buf_off += res;
		m->file_off += res;
		m->len -= res;
		submit_member(q, io, i);
		return;
	}
	if (res < 0 && io->err == 0)
		io->err = res;
	else if (rw && res == 0 && io->err == 0)
		io->err = -EIO; /* end of the backing store inside the device */
	if (--io->pending == 0)
		lease_finish(q, io);
}
