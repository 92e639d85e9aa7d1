/*
 * The contract between the engine and a target: one small ops table per target (targets/<name>/).
 *
 * A target never sees the data mode or the lease. For each request it describes *members*: backend
 * operations on its fixed files (1..n, in the order the TypeScript side opened them) that move bytes
 * between the request's buffer (or a buffer of the target's own, e.g. a protocol header) and a file or socket.
 * The engine turns members into io_uring SQEs on whatever buffer the mode provides (a leased fixed buffer
 * or a copy buffer), continues short transfers, holds the lease until every member and every zero-copy
 * notification is done, folds the results and commits.
 *
 * A request is either finished by queue_io (members described, or req->result set) or kept *pending*: the
 * target returns QUEUE_IO_PENDING, and later adds members (request_run) and releases it
 * (request_complete), from its own ring operations (tq_sqe) or from another thread
 * (queue_complete_remote). The queue thread alone talks to the kernel.
 */
#pragma once
#include <stdint.h>
#include <string.h>

#include <map>
#include <string>
#include <vector>

#include "ublk_abi.h"

struct io_uring_sqe;
struct io_uring_cqe;
struct queue;
struct queue_stats;

/* A completion handed over from another thread (queue_complete_remote). */
struct remote_completion {
	uint16_t tag;
	uint32_t gen;      /* the request's: a completion for an earlier request on the tag is dropped */
	int32_t result;    /* with no on_remote op: what the request is released with */
	uint64_t arg[2];   /* the target's own, for its on_remote: the engine never reads them */
};

enum member_kind : uint8_t {
	MEMBER_READ,      /* file -> buffer (READ_FIXED on the lease); on a socket, a plain read */
	MEMBER_WRITE,     /* buffer -> file */
	MEMBER_FSYNC,     /* fdatasync */
	MEMBER_FALLOCATE, /* mode in .mode, range in .file_off/.len */
	MEMBER_SEND,      /* buffer -> socket (fixed-buffer send on the lease) */
	MEMBER_SEND_ZC,   /* zero-copy send: two completions; the lease is held until the notification */
	MEMBER_RECV,      /* socket -> buffer, MSG_WAITALL (READ_FIXED on the lease) */
};

/* .ptr is a buffer of the target's own (a protocol header), not the request's buffer. */
#define MEMBER_F_TARGET_BUF 1

struct member {
	enum member_kind kind;
	uint8_t file;      /* fixed-file index; 0 is /dev/ublkcN, targets use 1.. */
	uint8_t stream;    /* 0: parallel, unlinked; n: issued one at a time, in order, on the queue's stream n */
	uint8_t flags;     /* MEMBER_F_* */
	uint32_t rw_flags; /* RWF_* for reads and writes (RWF_DSYNC for FUA), MSG_* for sends */
	uint32_t mode;     /* fallocate mode */
	uint32_t buf_off;  /* offset in the request buffer (or in .ptr) */
	uint32_t len;      /* bytes to move */
	uint64_t file_off;
	void *ptr;         /* with MEMBER_F_TARGET_BUF */
};

#define MAX_MEMBERS 16
#define MAX_STREAMS 8
/* Ring operations of its own a target may have in flight per request (tq_sqe with a request). */
#define MAX_REQUEST_OPS 2

/* A channel to the host's JavaScript (the handler it gave the device): post() hands it bytes, from any
 * thread, without blocking. What the bytes mean is between the target and that handler. */
struct host_channel {
	void (*post)(void *ctx, std::vector<uint8_t> &&bytes);
	void *ctx;
};

struct target_config {
	std::vector<int> fds;                            /* registered as files 1..n */
	struct host_channel *js = nullptr;               /* set when the host gave the device a handler */
	std::map<std::string, int64_t> nums;             /* target-specific numeric options */
	std::map<std::string, std::vector<int64_t>> lists; /* repeated numeric options (ranges) */
	std::map<std::string, std::string> strs;
	/* Copy buffers the host owns, one per tag (q * depth + tag), max_io_bytes each; the engine uses them
	 * instead of its own, so the host (JavaScript, with its Buffers) works on a request's bytes in place. */
	std::vector<void *> bufs;
	/* The keys the target reads (its ops' .options), set by the engine; reading any other one is a
	 * misspelling on one side or the other: it is noted here and fails the device's start (and the host
	 * tests), instead of silently reading as absent. */
	const char *const *declared = nullptr;
	mutable std::string undeclared;
	int64_t num(const char *key, int64_t dflt) const
	{
		auto it = nums.find(check(key));
		return it == nums.end() ? dflt : it->second;
	}
	/* A string option, or null if it was not given. */
	const std::string *str(const char *key) const
	{
		auto it = strs.find(check(key));
		return it == strs.end() ? nullptr : &it->second;
	}
	/* A repeated numeric option, or null if it was not given. */
	const std::vector<int64_t> *list(const char *key) const
	{
		auto it = lists.find(check(key));
		return it == lists.end() ? nullptr : &it->second;
	}

	const char *check(const char *key) const
	{
		for (const char *const *k = declared; k && *k; k++)
			if (!strcmp(*k, key))
				return key;
		if (undeclared.empty())
			undeclared = key;
		return key;
	}
};

struct target {
	const struct target_ops *ops;
	struct target_config cfg;
	void *priv;
	/* The device's queue count, set before init: a target may open a connection per queue. */
	uint16_t nr_queues = 1;
	/* The queues' counters (nr_queues), set by the engine before init: read them with target_requests. */
	const struct queue_stats *stats = nullptr;
	/* init's one-line reason for a failure; shown instead of strerror(-ret) when set. */
	std::string error;
};

/* A target's view of one queue; passed to every per-queue callback. */
struct tq {
	struct queue *q;
	const struct target *t;
	void *priv;        /* per-queue target state (queue_init) */
	uint16_t q_id;
	uint16_t depth;
};

/* What a target sees of one request. */
struct request {
	uint16_t q_id;
	uint16_t tag;
	uint32_t gen;        /* new with every request on this tag: stale completions are told apart */
	uint8_t op;          /* UBLK_IO_OP_* */
	uint32_t flags;      /* UBLK_IO_F_* */
	uint64_t offset;     /* bytes */
	uint32_t len;        /* bytes */
	int32_t result;      /* set by the target when it adds no member */
	bool copy;           /* serve through a copy the target can read and write (request_buf) */
	bool overflow;       /* more members were added than MAX_MEMBERS: the request fails */
	bool open;           /* the target may add members (in queue_io, and while it holds the request) */
	uint8_t nr_members;
	struct member members[MAX_MEMBERS + 1]; /* the last one absorbs an overflow */
};

enum { QUEUE_IO_DONE, QUEUE_IO_PENDING };

/* What a member's completion does to the request (on_member). */
enum member_fold {
	FOLD_DEFAULT, /* an error fails the request; a full transfer counts toward covering it */
	FOLD_IGNORE,  /* as if the member had not been there (a failed copy among replicas) */
	FOLD_RETRY,   /* the target changed the member (another leg, or the next piece of a request with
		       * more pieces than MAX_MEMBERS): issue it again */
};

/* Every op but name, init and queue_io is optional: a table names only what its target has. */
struct target_ops {
	const char *name;
	/* Once per device, on libuv's pool (it may block: a network handshake) before the queues start;
	 * it may add fds to t->cfg.fds. Return 0, or -errno with a one-line reason in t->error. */
	int (*init)(struct target *t) = nullptr;
	void (*deinit)(struct target *t) = nullptr;
	/* Optional, on the queue thread before the first FETCH and after the last commit. */
	int (*queue_init)(struct tq *tq) = nullptr;
	void (*queue_deinit)(struct tq *tq) = nullptr;
	/* Describe the request's members or set req->result, and return QUEUE_IO_DONE; or keep it and
	 * return QUEUE_IO_PENDING. Runs on the queue thread: must not block. */
	int (*queue_io)(struct tq *tq, struct request *req) = nullptr;
	/* Optional: a member finished (res as io_uring gave it, after short transfers were continued). */
	enum member_fold (*on_member)(struct tq *tq, struct request *req, unsigned idx, int res) = nullptr;
	/* Optional: the engine ended a request the target held and had not completed (a drain: `del`, or a
	 * failed queue). From here on the request is not the target's: members added to it and request_run
	 * are refused, and its tag may soon carry another request. */
	void (*on_release)(struct tq *tq, struct request *req) = nullptr;
	/* Optional: the request is about to be committed with this result (after every member, and after
	 * on_release for one the target held): what the target counted for it in flight ends here. */
	void (*on_done)(struct tq *tq, struct request *req, int32_t result) = nullptr;
	/* Optional: one of the target's own ring operations completed; req is null for queue-wide ones,
	 * and a request-bound one whose request has ended meanwhile is dropped, never delivered. */
	void (*on_cqe)(struct tq *tq, struct request *req, uint64_t cookie, const struct io_uring_cqe *cqe) = nullptr;
	/* Optional: a completion handed over from another thread (queue_complete_remote) for a request the
	 * target still holds, on the queue thread: what to make of it (c.arg) is the target's. It may add
	 * members; it must release the request (request_complete), now or later. Without it, the engine
	 * releases it with c.result. */
	void (*on_remote)(struct tq *tq, struct request *req, const struct remote_completion &c) = nullptr;
	/* Optional: the queue handled a batch of completions and is about to wait; a target that gathers
	 * work into batches (for the host's JavaScript) sends it now. */
	void (*queue_idle)(struct tq *tq) = nullptr;
	/* Optional: the device is being handed over to a next server (upgrade) and this queue holds no request
	 * any more. Start what must end before the next server takes over (a flush of writes the backend
	 * acknowledged to this queue only) and return true until it has ended. Asked again after every batch
	 * of completions: while it returns true, it keeps a ring operation of its own in flight. */
	bool (*queue_settle)(struct tq *tq) = nullptr;
	/* Queue-wide ring operations of its own the target keeps in flight at most (sizes the CQ). */
	unsigned queue_ops = 0;
	/* Optional: the target's live state as the text of a JSON object (its legs' health), shown by `list`
	 * and logged when it changes. Called on the JavaScript thread while queues run: read only what is
	 * safe to read from there (atomics). */
	std::string (*status)(const struct target *t) = nullptr;
	/* Optional: an operator's command to the running target (`ublk-ts <target> <verb>`), as text; the
	 * reply is the text of a JSON object. On libuv's pool while queues run: it may block, not for long. */
	std::string (*command)(struct target *t, const std::string &cmd) = nullptr;
	/* The option keys it reads from its config (num, str, list), null-terminated: one list beside the
	 * code that reads them; the host tests hold its index.ts to the same list. */
	const char *const *options = nullptr;
};

/* Member builder for queue_io. Past MAX_MEMBERS it marks the request failed and returns a scratch slot,
 * so a target never writes through a null pointer and never has a member silently dropped. On a request
 * that is no longer open it returns the scratch slot too: nothing is issued into a buffer it no longer owns. */
static inline struct member *add_member(struct request *req, enum member_kind kind, uint8_t file)
{
	struct member *m;
	if (!req->open || req->nr_members >= MAX_MEMBERS) {
		req->overflow |= req->open;
		m = &req->members[MAX_MEMBERS];
	} else {
		m = &req->members[req->nr_members++];
	}
	*m = member{};
	m->kind = kind;
	m->file = file;
	return m;
}

/* ---- What the engine offers a target (queue thread only, except queue_complete_remote) ---- */

/* Issue the members added since the last call (leasing the buffer first if the mode needs it); refused on a
 * request that is not open. */
void request_run(struct tq *tq, struct request *req);
/* Release a pending request: it completes once its members are done. A negative result fails it; with
 * no members, result is what is committed. */
void request_complete(struct tq *tq, struct request *req, int32_t result);
/* The bytes of a request served through a copy (req->copy, or a copy data mode), else null (also when
 * a WRITE's bytes could not be copied in). A WRITE's buffer holds its bytes; what a READ's holds when the
 * request ends is what the reader gets, so a target that fills it itself completes with no member. */
void *request_buf(struct tq *tq, struct request *req);
/* An SQE for the target's own operation; its CQE comes back through on_cqe with this cookie (at most
 * 8 bits with a request, 48 without). Bound to req when given: at most MAX_REQUEST_OPS in flight. */
struct io_uring_sqe *tq_sqe(struct tq *tq, struct request *req, uint64_t cookie);
/* Puts fd in the queue's fixed file `file` (an fd of -1 among the target's files at init reserves a slot),
 * for a target whose files change while it runs (a backend added online). Queue thread only; 0 or -errno. */
int tq_set_file(struct tq *tq, unsigned file, int fd);
/* The queue is stopping or has failed: a request held now would be ended at once (on_release). */
bool tq_draining(const struct tq *tq);
/* From any thread: the requests the device's queues have taken so far (`stats` counts them), from which
 * a target tells whether user IO is active. */
uint64_t target_requests(const struct target *t);
/* The queue cannot go on: every request it holds fails with EIO, new ones too, and the device stops. */
void queue_fail(struct tq *tq, const std::string &why);
/* From any thread: complete pending request c.tag (on the queue thread: the target's on_remote, or
 * request_complete with c.result). Returns 0, or -EAGAIN if the bounded hand-over queue is full (one
 * entry per tag: only a caller that completes a request twice can fill it). */
int queue_complete_remote(struct queue *q, const struct remote_completion &c);

void target_register(const struct target_ops *ops);
const struct target_ops *target_find(const std::string &name);
const std::vector<const struct target_ops *> &target_all();

/* Each target's .cc registers itself at load time, so a new target is a new folder and nothing else. */
#define UBLK_TARGET(ops)                                   \
	__attribute__((constructor)) static void reg_##ops(void) \
	{                                                  \
		target_register(&ops);                     \
	}
