/*
 * The request engine: one request, from the target's members to its commit, in every data mode. Called by
 * the queue thread (queue.cc) and by targets (request_run, request_complete, request_buf); it calls only
 * the ring (ring.cc) and the target's hooks. On the lease, the request's buffer is lent to its members and
 * handed back:
 *
 *   leader    UBLK_U_IO_REGISTER_IO_BUF puts the request's pages into this ring's sparse buffer table
 *             (lease mode; in auto-lease mode the driver did it before the request reached us)
 *   members   the target's backend operations on the leased slot (READ_FIXED / WRITE_FIXED, fixed-buffer
 *             send and receive, SEND_ZC): parallel and unlinked, or in order on a stream (a header, then
 *             its payload, on one socket)
 *   fold      short transfers are continued; the target's on_member hook may ignore or retry a member;
 *             otherwise the first error wins, and a READ/WRITE succeeds only if its members covered it
 *   hand-back once every member, every zero-copy notification and the target's hold are done:
 *             UBLK_U_IO_UNREGISTER_IO_BUF (lease mode) and COMMIT_AND_FETCH in the same batch; under
 *             auto-lease the commit itself hands the buffer back
 *
 * Copy and user-copy modes, and a request the target asked to see (req.copy), run the same members on a
 * private per-tag buffer instead.
 */
#include <errno.h>
#include <stdlib.h>

#include <algorithm>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "queue.h"

static bool is_transfer(enum member_kind k)
{
	return k != MEMBER_FSYNC && k != MEMBER_FALLOCATE;
}

static bool on_request_buf(const struct member *m)
{
	return is_transfer(m->kind) && !(m->flags & MEMBER_F_TARGET_BUF);
}

/* Served through our buffer rather than on the lease. */
static bool copied(const struct queue *q, const struct io *io)
{
	return q->dev->mode == MODE_COPY || q->dev->mode == MODE_USER_COPY || io->req.copy;
}

/* Our buffer and the kernel's pages are exchanged by pread/pwrite on /dev/ublkcN (in copy mode the
 * driver does it). */
static bool via_user_copy(const struct queue *q, const struct io *io)
{
	return q->dev->mode == MODE_USER_COPY || (io->req.copy && q->dev->mode != MODE_COPY);
}

static uint64_t user_copy_offset(const struct request *req)
{
	return UBLKSRV_IO_BUF_OFFSET + ((uint64_t)req->q_id << UBLK_QID_OFF) + ((uint64_t)req->tag << UBLK_TAG_OFF);
}

/* Move `len` bytes between our buffer and the kernel's pages (user copy); loops on short transfers. Runs
 * on the queue thread: it is a copy between buffers, not backend I/O. */
static int user_copy(struct queue *q, struct io *io, size_t len, bool to_kernel)
{
	size_t done = 0;
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

/* The copy buffer, made on first use where the mode does not need one for every tag. */
static int ensure_buf(struct queue *q, struct io *io)
{
	if (io->buf)
		return 0;
	if (q->dev->mode != MODE_COPY && q->dev->mode != MODE_USER_COPY && !q->dev->user_copy)
		return -EOPNOTSUPP; /* the device cannot copy: the request can only be served on the lease */
	const std::vector<void *> &host = q->dev->tgt.cfg.bufs;
	if (!host.empty()) {
		io->buf = host[(size_t)q->q_id * q->dev->depth + io->req.tag];
		return 0;
	}
	return posix_memalign(&io->buf, 4096, q->dev->max_io_bytes) ? -ENOMEM : 0;
}

/* The request's bytes in our buffer: a WRITE's copied in now (once), a READ's from here on its answer. */
static int take_buf(struct queue *q, struct io *io)
{
	int ret = ensure_buf(q, io);
	if (ret == 0 && !io->buf_used && io->req.op == UBLK_IO_OP_WRITE && via_user_copy(q, io))
		ret = user_copy(q, io, io->req.len, false);
	if (ret == 0)
		io->buf_used = true;
	return ret;
}

void *request_buf(struct tq *tq, struct request *req)
{
	struct io *io = &tq->q->ios[req->tag];
	if (!copied(tq->q, io))
		return nullptr;
	return take_buf(tq->q, io) == 0 ? io->buf : nullptr;
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
	uint32_t done = io->ms[i].done, len = m->len - done;
	struct io_uring_sqe *sqe = queue_sqe(q);
	/* Where the bytes are: the target's own buffer, our copy buffer, or the leased slot (an offset). */
	bool fixed = on_request_buf(m) && !copied(q, io);
	int slot = io->leased ? lease_slot(q, io->req.tag) : auto_slot(q, io->req.tag);
	char *p = (m->flags & MEMBER_F_TARGET_BUF) ? (char *)m->ptr + m->buf_off + done
		  : fixed			  ? (char *)(uintptr_t)(m->buf_off + done)
						  : (char *)io->buf + m->buf_off + done;

	switch (m->kind) {
	case MEMBER_READ:
	case MEMBER_RECV:
	case MEMBER_WRITE: {
		bool rd = m->kind != MEMBER_WRITE;
		/* A socket has no offset; io_uring ignores it there. */
		uint64_t off = m->kind == MEMBER_RECV ? 0 : m->file_off + done;
		if (fixed && rd)
			io_uring_prep_read_fixed(sqe, m->file, p, len, off, slot);
		else if (fixed)
			io_uring_prep_write_fixed(sqe, m->file, p, len, off, slot);
		else if (m->kind == MEMBER_RECV)
			io_uring_prep_recv(sqe, m->file, p, len, MSG_WAITALL | m->rw_flags);
		else if (rd)
			io_uring_prep_read(sqe, m->file, p, len, off);
		else
			io_uring_prep_write(sqe, m->file, p, len, off);
		if (m->kind != MEMBER_RECV)
			sqe->rw_flags = m->rw_flags;
		break;
	}
	case MEMBER_SEND:
	case MEMBER_SEND_ZC:
		if (m->kind == MEMBER_SEND_ZC)
			io_uring_prep_send_zc(sqe, m->file, p, len, MSG_NOSIGNAL | m->rw_flags, 0);
		else
			io_uring_prep_send(sqe, m->file, p, len, MSG_NOSIGNAL | m->rw_flags);
		if (fixed) {
			sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
			sqe->buf_index = slot;
		}
		break;
	case MEMBER_FSYNC:
		io_uring_prep_fsync(sqe, m->file, IORING_FSYNC_DATASYNC);
		break;
	case MEMBER_FALLOCATE:
		io_uring_prep_fallocate(sqe, m->file, m->mode, m->file_off, m->len);
		break;
	}
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, ud_make(io->req.tag, UD_MEMBER, i, io->req.gen));
	io->ms[i].busy = true;
}

static uint32_t stream_key(const struct io *io, unsigned i)
{
	return (uint32_t)io->req.tag << 8 | i;
}

static void maybe_finish(struct queue *q, struct io *io);
static void fail(struct io *io, int32_t err);

/* Issue the head of a stream if nothing of it is in flight. While draining, queued members are failed
 * instead: behind a stuck head, nothing more goes out on that stream. */
static void stream_kick(struct queue *q, struct stream *s)
{
	while (!s->busy && s->head != STREAM_END) {
		struct io *io = &q->ios[s->head >> 8];
		unsigned i = s->head & 0xff;
		if (!q->draining) {
			s->busy = true;
			submit_member(q, io, i);
			return;
		}
		s->head = io->ms[i].next;
		if (s->head == STREAM_END)
			s->tail = STREAM_END;
		fail(io, -EIO);
		io->inflight--;
		maybe_finish(q, io);
	}
}

static void stream_push(struct queue *q, struct io *io, unsigned i)
{
	struct stream *s = &q->streams[io->req.members[i].stream % MAX_STREAMS];
	uint32_t key = stream_key(io, i);
	io->ms[i].next = STREAM_END;
	if (s->head == STREAM_END)
		s->head = key;
	else
		q->ios[s->tail >> 8].ms[s->tail & 0xff].next = key;
	s->tail = key;
	stream_kick(q, s);
}

/* The stream's head member is done: the next one may go. */
static void stream_pop(struct queue *q, struct io *io, unsigned i)
{
	struct stream *s = &q->streams[io->req.members[i].stream % MAX_STREAMS];
	s->head = io->ms[i].next;
	if (s->head == STREAM_END)
		s->tail = STREAM_END;
	s->busy = false;
	stream_kick(q, s);
}

/* A member moved all its bytes: add its range to what the request's members have covered. Kept as
 * sorted, merged ranges, so pieces completing out of order, replicas' members that overlap, and members a
 * target reuses for the next piece (FOLD_RETRY) all count once. */
static void cover(struct io *io, uint32_t start, uint32_t end)
{
	unsigned n = io->nr_cov, i = 0, j;
	if (n == 0) {
		/* the common case: the first (often the only) member of the request */
		io->cov[0] = {start, end};
		io->nr_cov = 1;
		return;
	}
	while (i < n && io->cov[i].end < start)
		i++;
	/* cov[i..j) touch [start, end): merge them into one */
	for (j = i; j < n && io->cov[j].start <= end; j++) {
		start = std::min(start, io->cov[j].start);
		end = std::max(end, io->cov[j].end);
	}
	if (j == i && n == MAX_MEMBERS)
		return; /* too fragmented to track: the request fails as uncovered rather than over-report */
	memmove(&io->cov[i + 1], &io->cov[j], (n - j) * sizeof(io->cov[0]));
	io->cov[i] = {start, end};
	io->nr_cov = n - (j - i) + 1;
}

static bool covered(const struct io *io)
{
	return io->nr_cov == 1 && io->cov[0].start == 0 && io->cov[0].end >= io->req.len;
}

/* Every member is done and the target let go: fold, hand the buffer back, commit. */
static void finish(struct queue *q, struct io *io)
{
	struct request *req = &io->req;
	bool data = req->op == UBLK_IO_OP_READ || req->op == UBLK_IO_OP_WRITE;
	int32_t result = io->err;
	if (result == 0 && req->nr_members == 0)
		result = io->tresult;
	else if (result == 0 && data && !covered(io)) {
		/* Never over-report: the kernel would hand unfilled pages to the reader. */
		queue_set_error(q, "target " + std::string(q->dev->tgt.ops->name) + " left part of a request uncovered");
		result = -EIO;
	} else if (result == 0)
		result = data ? (int32_t)req->len : 0;
	/* Only a buffer members filled, or the target took (request_buf), goes back: nobody else's old
	 * contents reach the reader. */
	if (result > 0 && req->op == UBLK_IO_OP_READ && io->buf_used && via_user_copy(q, io)) {
		int ret = user_copy(q, io, result, true);
		if (ret < 0)
			result = ret;
	}
	bump(q->stats->requests);
	if (result < 0)
		bump(q->stats->errors);
	else if (data && (req->nr_members > 0 || io->buf_used))
		bump(copied(q, io) ? q->stats->copied : q->stats->leased);
	if (q->dev->tgt.ops->on_done)
		q->dev->tgt.ops->on_done(&q->tq, req, result);
	if (io->leased) {
		/* Submitted before the commit in the same batch: the slot is free when the tag's next
		 * request asks for a lease. */
		prep_lease_cmd(q, io, UBLK_U_IO_UNREGISTER_IO_BUF, UD_UNLEASE)->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io->leased = false;
	}
	queue_commit(q, io, result);
}

static void maybe_finish(struct queue *q, struct io *io)
{
	if (io->inflight == 0 && !io->held && !io->leasing && io->state == IO_SERVING)
		finish(q, io);
}

static void fail(struct io *io, int32_t err)
{
	if (io->err == 0)
		io->err = err;
}

/* Does any member still to be issued need the lease we do not hold yet? */
static bool needs_leader(const struct queue *q, const struct io *io)
{
	const struct request *req = &io->req;
	if (io->leased || io->leasing || copied(q, io) || !(q->dev->mode == MODE_LEASE || (req->flags & UBLK_IO_F_NEED_REG_BUF)))
		return false;
	for (unsigned i = io->submitted; i < req->nr_members; i++)
		if (on_request_buf(&req->members[i]))
			return true;
	return false;
}

/* Issue members[submitted..nr_members). If one of them is on the request buffer and the mode needs a
 * manual lease, the leader goes first and all of them wait for its CQE: none goes ahead, or a protocol
 * header would enter its stream while its payload waits, and another request's bytes could come between. */
static void issue(struct queue *q, struct io *io)
{
	struct request *req = &io->req;
	if (req->overflow) {
		queue_set_error(q, "target " + std::string(q->dev->tgt.ops->name) + " added more than " +
					   std::to_string(MAX_MEMBERS) + " members to one request");
		fail(io, -EIO);
		req->nr_members = io->submitted; /* the ones never issued are not waited for */
		req->overflow = false;
		return;
	}
	if (needs_leader(q, io)) {
		/* The leader: members can only be issued once its CQE says the slot holds our pages, which
		 * is what lets them run in parallel instead of in a linked chain. */
		io->leasing = true;
		prep_lease_cmd(q, io, UBLK_U_IO_REGISTER_IO_BUF, UD_LEADER);
		return;
	}
	while (io->submitted < req->nr_members) {
		unsigned i = io->submitted;
		struct member *m = &req->members[i];
		io->ms[i] = member_state{};
		if (on_request_buf(m)) {
			if ((uint64_t)m->buf_off + m->len > req->len) {
				/* Outside the request: fixed buffers would refuse it, our copy buffer would overflow. */
				fail(io, -EIO);
				io->submitted++;
				continue;
			}
			if (copied(q, io)) {
				int ret = take_buf(q, io);
				if (ret < 0) {
					fail(io, ret);
					io->submitted++;
					continue;
				}
			}
		}
		io->submitted++;
		io->inflight++;
		if (m->stream)
			stream_push(q, io, i);
		else
			submit_member(q, io, i);
	}
}

void lease_run(struct queue *q, struct io *io)
{
	issue(q, io);
	maybe_finish(q, io);
}

void lease_release(struct queue *q, struct io *io, int32_t result)
{
	io->held = false;
	io->req.open = false;
	io->tresult = result;
	if (result < 0)
		fail(io, result);
	issue(q, io);
	maybe_finish(q, io);
}

void lease_on_leader(struct queue *q, struct io *io, int res)
{
	io->leasing = false;
	if (res < 0) {
		/* Nothing after the leader was issued: those members are dropped with the request, and the
		 * target hears of each, as if it had failed, so its own count of what is in flight holds. */
		fail(io, res);
		const struct target_ops *ops = q->dev->tgt.ops;
		for (unsigned i = io->submitted; ops->on_member && i < io->req.nr_members; i++)
			ops->on_member(&q->tq, &io->req, i, res);
		io->req.nr_members = io->submitted;
	} else {
		io->leased = true;
		issue(q, io);
	}
	maybe_finish(q, io);
}

void lease_on_member(struct queue *q, struct io *io, unsigned i, const struct io_uring_cqe *cqe)
{
	struct member *m = &io->req.members[i];
	struct member_state *ms = &io->ms[i];
	int res = cqe->res;
	if (cqe->flags & IORING_CQE_F_NOTIF) {
		/* The network no longer holds the pages: the lease may go back now. */
		io->inflight--;
		maybe_finish(q, io);
		return;
	}
	/* A zero-copy send's result: its notification is still to come and keeps the member counted. */
	bool more = cqe->flags & IORING_CQE_F_MORE;
	ms->busy = false;
	if (is_transfer(m->kind) && res > 0 && ms->done + res < m->len) {
		/* A short transfer is not the whole transfer: continue where it stopped, before anything
		 * else on its stream. */
		ms->done += res;
		if (more)
			io->inflight++;
		bump(q->stats->short_transfers);
		submit_member(q, io, i);
		return;
	}
	if (is_transfer(m->kind) && res > 0)
		ms->done += res;
	/* What the member covered, taken before on_member may turn it into the next piece (FOLD_RETRY). */
	bool full = on_request_buf(m) && res > 0 && ms->done == m->len;
	uint32_t start = m->buf_off, end = m->buf_off + m->len;
	enum member_fold f = q->dev->tgt.ops->on_member ? q->dev->tgt.ops->on_member(&q->tq, &io->req, i, res) : FOLD_DEFAULT;
	if (f != FOLD_IGNORE && full)
		cover(io, start, end);
	if (f == FOLD_RETRY && q->draining)
		fail(io, -EIO); /* stopping: the piece or leg the target asked for is not issued */
	else if (f == FOLD_RETRY && on_request_buf(m) && (uint64_t)m->buf_off + m->len > io->req.len)
		fail(io, -EIO); /* moved outside the request: as issue() refuses it the first time */
	else if (f == FOLD_RETRY) {
		bump(q->stats->retries);
		ms->done = 0;
		if (more)
			io->inflight++;
		submit_member(q, io, i);
		return;
	}
	if (f != FOLD_IGNORE && (res < 0 || (is_transfer(m->kind) && res == 0))) {
		/* res 0 on a transfer: the end of the backing store (or a closed socket) inside the request */
		fail(io, res < 0 ? res : -EIO);
	}
	if (m->stream)
		stream_pop(q, io, i);
	if (!more)
		io->inflight--;
	maybe_finish(q, io);
}

/* Draining: members the target still waits on (a socket that will never answer) are cancelled. */
void lease_cancel_members(struct queue *q, struct io *io)
{
	for (unsigned i = 0; i < io->submitted; i++) {
		if (!io->ms[i].busy)
			continue;
		struct io_uring_sqe *sqe = queue_sqe(q);
		io_uring_prep_cancel64(sqe, ud_make(io->req.tag, UD_MEMBER, i, io->req.gen), 0);
		io_uring_sqe_set_data64(sqe, ud_make(io->req.tag, UD_CANCEL, i));
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	}
}

/* ---- what targets call ---- */

void request_run(struct tq *tq, struct request *req)
{
	if (req->open)
		lease_run(tq->q, &tq->q->ios[req->tag]);
}

void request_complete(struct tq *tq, struct request *req, int32_t result)
{
	struct io *io = &tq->q->ios[req->tag];
	if (io->held && io->state == IO_SERVING)
		lease_release(tq->q, io, result);
}
