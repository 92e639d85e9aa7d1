/* io_uring names that bookworm's liburing 2.3 lacks; values from the Linux 7.2 uapi. */
#pragma once
#include <liburing.h>
#include <string.h>

#ifndef IORING_NOP_INJECT_RESULT
#define IORING_NOP_INJECT_RESULT (1U << 0)
#endif
#ifndef IORING_NOP_FIXED_BUFFER
#define IORING_NOP_FIXED_BUFFER (1U << 3)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_RECVSEND_FIXED_BUF
#define IORING_RECVSEND_FIXED_BUF (1U << 2)
#endif

/* Fill a uring_cmd SQE from scratch: liburing 2.3's get_sqe clears nothing. */
static inline void ublk_prep_cmd(struct io_uring_sqe *sqe, int fd, uint32_t cmd_op, const void *cmd, size_t cmd_len,
				 size_t sqe_size)
{
	/* sqe_size is 128 on the control ring (SQE128): the struct type only covers the first 64 bytes. */
	char *raw = reinterpret_cast<char *>(sqe);
	memset(raw, 0, sqe_size);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	/* cmd_op is the low half of the 64-bit off field; the high half (__pad1) must stay 0. */
	sqe->off = cmd_op;
	memcpy(raw + 48, cmd, cmd_len);
}

/* Block device commands of IORING_OP_URING_CMD (<linux/blkdev.h>, 6.12): sqe->addr is the start and
 * sqe->addr3 the length, in bytes. A number space of their own, not ioctls: _IO(0x12, 0). */
#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD 0x1200U
#endif
