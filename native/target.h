/*
 * The contract between the engine and a target: one small ops table per target (targets/<name>/).
 *
 * A target never builds SQEs and never sees the data mode. For each request it describes *members*:
 * backend operations on its files (fixed-file index 1..n, in the order the TypeScript side opened them)
 * that read into or write from the request's buffer at an offset. The engine turns members into io_uring
 * SQEs on whatever buffer the mode provides (a leased fixed buffer, or a copy buffer), submits them in
 * parallel, continues short transfers and folds their results into the one result it commits.
 */
#pragma once
#include <stdint.h>

#include <map>
#include <string>
#include <vector>

#include "ublk_abi.h"

enum member_kind : uint8_t {
	MEMBER_READ,      /* file -> request buffer */
	MEMBER_WRITE,     /* request buffer -> file */
	MEMBER_FSYNC,     /* fdatasync */
	MEMBER_FALLOCATE, /* mode in .mode, range in .file_off/.len */
};

struct member {
	enum member_kind kind;
	uint8_t file;      /* fixed-file index; 0 is /dev/ublkcN, targets use 1.. */
	uint16_t rw_flags; /* RWF_* for reads and writes (RWF_DSYNC for FUA) */
	uint32_t mode;     /* fallocate mode */
	uint32_t buf_off;  /* offset in the request buffer */
	uint32_t len;      /* bytes still to move */
	uint64_t file_off;
};

#define MAX_MEMBERS 16

struct target_config {
	std::vector<int> fds;                 /* opened by the TypeScript target, registered as files 1..n */
	std::map<std::string, int64_t> nums;  /* target-specific numeric options */
	int64_t num(const char *key, int64_t dflt) const
	{
		auto it = nums.find(key);
		return it == nums.end() ? dflt : it->second;
	}
};

struct target {
	const struct target_ops *ops;
	struct target_config cfg;
	void *priv;
};

/* What a target sees of one request. */
struct request {
	uint16_t q_id;
	uint16_t tag;
	uint8_t op;          /* UBLK_IO_OP_* */
	uint32_t flags;      /* UBLK_IO_F_* */
	uint64_t offset;     /* bytes */
	uint32_t len;        /* bytes */
	struct member members[MAX_MEMBERS];
	uint8_t nr_members;
	int32_t result;      /* set by the target when it adds no member */
};

struct target_ops {
	const char *name;
	/* Called once per device on the JavaScript thread; return 0 or -errno. */
	int (*init)(struct target *t);
	void (*deinit)(struct target *t);
	/* Describe the request's members, or set req->result and add none. Runs on the queue thread:
	 * must not block. */
	void (*queue_io)(const struct target *t, struct request *req);
};

/* Member builders for queue_io. */
static inline struct member *add_member(struct request *req, enum member_kind kind, uint8_t file)
{
	if (req->nr_members >= MAX_MEMBERS)
		return nullptr;
	struct member *m = &req->members[req->nr_members++];
	*m = member{};
	m->kind = kind;
	m->file = file;
	return m;
}

void target_register(const struct target_ops *ops);
const struct target_ops *target_find(const std::string &name);

/* Each target's .cc registers itself at load time, so a new target is a new folder and nothing else. */
#define UBLK_TARGET(ops)                                   \
	__attribute__((constructor)) static void reg_##ops(void) \
	{                                                  \
		target_register(&ops);                     \
	}
