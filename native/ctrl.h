/* The control plane: one ublk control command on /dev/ublk-control through an SQE128 io_uring. */
#pragma once
#include <stdint.h>
#include <string>

#include "ublk_abi.h"

struct ctrl_cmd {
	const char *name; /* for errors: "ADD_DEV" */
	uint32_t op;
	struct ublksrv_ctrl_cmd cmd;
};

/* Runs one command to completion on the calling thread (blocking). Returns cqe->res, or -errno when the
 * control node or the ring cannot be set up; *where names the failing step. */
int ctrl_run(struct ctrl_cmd *c, const char **where);

/* "EINVAL" for 22; used in every error we raise. */
std::string errno_name(int err);
