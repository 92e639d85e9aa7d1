#include "ctrl.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "uring_compat.h"

std::string errno_name(int err)
{
	const char *name = strerrorname_np(err);
	return name ? name : "E" + std::to_string(err);
}

/* A ring per command keeps the control plane free of shared state: commands come from libuv's thread
 * pool, START_DEV and DEL_DEV may block for long, and nothing must serialize behind them. */
int ctrl_run(struct ctrl_cmd *c, const char **where)
{
	*where = "open /dev/ublk-control";
	int fd = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;

	struct io_uring ring;
	*where = "io_uring_queue_init";
	int ret = io_uring_queue_init(4, &ring, IORING_SETUP_SQE128);
	if (ret < 0) {
		close(fd);
		return ret;
	}
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	if (!sqe) { /* cannot happen on a fresh ring; keeps the compiler's bounds check honest */
		io_uring_queue_exit(&ring);
		close(fd);
		return -EBUSY;
	}
	ublk_prep_cmd(sqe, fd, c->op, &c->cmd, sizeof(c->cmd), 128);
	*where = c->name;
	ret = io_uring_submit(&ring);
	if (ret >= 0) {
		struct io_uring_cqe *cqe;
		do
			ret = io_uring_wait_cqe(&ring, &cqe);
		while (ret == -EINTR);
		if (ret == 0) {
			ret = cqe->res;
			io_uring_cqe_seen(&ring, cqe);
		}
	}
	io_uring_queue_exit(&ring);
	close(fd);
	return ret;
}
