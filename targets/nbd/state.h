/*
 * The nbd target's state and the calls between its files (nbd.h is the protocol and reaching a server):
 *   nbd.cc         the ops table, init and deinit, status
 *   connection.cc  choosing how to send, opening the connections (one per queue), the reconnect worker and,
 *                  on a queue thread, losing a connection and swapping the reconnected socket in
 *   wire.cc        one queue's transmission phase: requests in slots, headers and payloads on the wire,
 *                  replies, timeouts, teardown
 */
#ifndef UBLK_TS_NBD_STATE_H
#define UBLK_TS_NBD_STATE_H

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "nbd.h"
#include "../../native/uring_compat.h"

enum send_mode { SEND_FIXED, SEND_ZC, SEND_COPY };

enum conn_state { CONN_UP, CONN_RECONNECTING, CONN_DEAD };

/* One connection, used by one queue. `fd` is replaced by that queue's thread on reconnect and closed at
 * deinit, after every queue thread has ended. */
struct conn {
	int fd = -1;
	int evfd = -1; /* the reconnect worker wakes the queue through it */
	std::atomic<int> state{CONN_UP};
	std::atomic<unsigned> reconnects{0};
	/* Handed over by the worker under nbd::mu. */
	int new_fd = -1;
	bool failed = false;
};

/* The target: its connections and what they share. */
struct nbd {
	struct server srv;
	unsigned reconnect = 0;
	enum send_mode send = SEND_FIXED;
	struct export_info ei {};
	std::vector<std::unique_ptr<struct conn>> conns;

	/* The reconnect worker: jobs are connection indexes. */
	mutable std::mutex mu;
	std::condition_variable cv;
	std::deque<unsigned> jobs;
	bool stop = false;
	int cancel_fd = -1; /* interrupts the worker's handshake and backoff at deinit */
	std::thread worker;
	std::string last_error; /* under mu */

	/* Writes acknowledged without FUA, numbered across connections, and the highest number a successful FLUSH
	 * covered (one FLUSH covers every connection's: we open more than one only with CAN_MULTI_CONN). */
	std::atomic<uint64_t> acks{0}, flushed{0};
	/* Connections lost while holding acknowledged writes no FLUSH had covered yet (the server instance that
	 * took them is gone), and how many of those losses a failed FLUSH has reported. */
	std::atomic<uint32_t> losses{0}, reported{0};
};

/* Where a slot's request is on its connection: wire.cc's step() moves it from phase to phase (the top of
 * wire.cc). */
enum phase : uint8_t {
	P_FREE,
	P_QUEUED,  /* held, not on the wire: waiting for a connection */
	P_SENT,    /* header (and payload) sent or sending; waiting for the reply */
	P_PAYLOAD, /* the reply came; its payload is being received into the request's buffer */
};

struct slot {
	struct request *req;
	uint32_t gen;
	uint8_t phase;
	uint16_t cmd;
	uint16_t cflags;
	uint32_t seq; /* order of first sending, kept for resends */
	int64_t deadline;
	uint64_t mark; /* a FLUSH: nbd::acks when it went on the wire */
};

/* The FLUSH a queue sends before a handover (nbd_queue_settle). */
enum settle : uint8_t { SETTLE_NONE, SETTLE_SENT, SETTLE_DONE };

/* Cookies of the queue's own ring operations (queue-wide, tq_sqe without a request). */
enum { OP_RECV = 1, OP_TIMER, OP_EVENT, OP_FUPD };

struct nbd_q {
	struct nbd *n;
	struct conn *c;
	uint8_t file;
	std::vector<struct nbd_request> hdr; /* per tag: read by the kernel while the header send runs */
	/* Runs of payload-less headers: a ring of depth entries, [ring_head, ring_tail) queued or being sent
	 * (free-running counters), [open_at, ring_tail) the run still gathering; run_owner's request sends it. */
	std::vector<struct nbd_request> ring;
	uint32_t ring_head, ring_tail, open_at;
	uint16_t run_owner;
	std::vector<struct slot> slots;      /* per tag */
	struct nbd_simple_reply reply;
	uint32_t reply_got;
	unsigned wire;  /* our members in flight on the socket */
	unsigned held;  /* slots in use */
	uint32_t seq;
	uint16_t salt;    /* the top 16 bits of every cookie on this queue (see on_reply) */
	uint64_t last_ack; /* the number (nbd::acks) of the last write this connection acknowledged without FUA */
	bool recv_armed, timer_armed, timer_multishot, ev_armed, fupd_busy, stopping;
	uint8_t settle;                  /* enum settle */
	struct nbd_request settle_req;   /* its header, sent from here */
	int64_t settle_deadline;
	int pending_fd; /* a reconnected socket waiting until nothing of the old one is in flight */
	int fupd_fd;    /* read by IORING_OP_FILES_UPDATE */
	uint64_t ev_val;
	struct __kernel_timespec tick;
};

static inline struct nbd_q *Q(struct tq *tq)
{
	return static_cast<struct nbd_q *>(tq->priv);
}

/* ---- connection.cc ---- */

/* Sets n->send from --send (empty: the best this kernel and endpoint allow); -errno with *why. */
int nbd_choose_send(struct nbd *n, const std::string &want, std::string *why);
/* Opens one connection per queue (more than one only with NBD_FLAG_CAN_MULTI_CONN) and, with --reconnect,
 * the worker; -errno with *why. What it opened is n's until nbd_free. */
int nbd_connect(struct nbd *n, int64_t queues, std::string *why);
void nbd_free(struct nbd *n);
/* On the queue's thread. */
void nbd_conn_lost(struct tq *tq, struct nbd_q *nq, const std::string &why);
/* What `list` shows as the target's last error. */
void nbd_set_error(struct nbd *n, const std::string &why);
void nbd_try_install(struct tq *tq, struct nbd_q *nq);
void nbd_on_installed(struct tq *tq, struct nbd_q *nq, int res);
void nbd_on_event(struct tq *tq, struct nbd_q *nq, int res);

/* ---- wire.cc ---- */

void nbd_arm_recv(struct tq *tq, struct nbd_q *nq);
void nbd_fail_all(struct tq *tq, struct nbd_q *nq, int res);
/* The connection is lost and another one is coming: what was sent goes again on it. */
void nbd_hold_all(struct tq *tq, struct nbd_q *nq);
void nbd_resend(struct tq *tq, struct nbd_q *nq);
void nbd_enter_stopping(struct nbd_q *nq);
int nbd_queue_init(struct tq *tq);
void nbd_queue_deinit(struct tq *tq);
int nbd_queue_io(struct tq *tq, struct request *req);
enum member_fold nbd_on_member(struct tq *tq, struct request *req, unsigned idx, int res);
void nbd_on_release(struct tq *tq, struct request *req);
void nbd_on_cqe(struct tq *tq, struct request *, uint64_t cookie, const struct io_uring_cqe *cqe);
void nbd_queue_idle(struct tq *tq);
bool nbd_queue_settle(struct tq *tq);

#endif
