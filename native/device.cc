#include "device.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

std::string device_open(struct device *d)
{
	struct device_ctx *ctx = &d->ctx;
	std::string path = "/dev/ublkc" + std::to_string(ctx->dev_id);
	ctx->ublkc_fd = -1;
	/* The node appears through devtmpfs right after ADD_DEV; give udev-less systems a moment. */
	for (int i = 0; i < 300 && ctx->ublkc_fd < 0; i++) {
		ctx->ublkc_fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
		if (ctx->ublkc_fd < 0 && errno != ENOENT)
			break;
		if (ctx->ublkc_fd < 0)
			usleep(10000);
	}
	if (ctx->ublkc_fd < 0)
		return "open " + path + ": " + strerror(errno);

	ctx->tgt.nr_queues = ctx->nr_queues;
	ctx->stats.reset(new queue_stats[ctx->nr_queues]());
	ctx->tgt.stats = ctx->stats.get();
	ctx->tgt.cfg.declared = ctx->tgt.ops->options;
	int ret = ctx->tgt.ops->init(&ctx->tgt);
	if (ret < 0) {
		d->target_failed = true;
		const std::string &why = ctx->tgt.error;
		return !why.empty() ? why : std::string("target ") + ctx->tgt.ops->name + ": " + strerror(-ret);
	}
	if (!ctx->tgt.cfg.undeclared.empty()) {
		d->target_ready = true; /* initialised: deinit releases it */
		return std::string("target ") + ctx->tgt.ops->name + " read option \"" + ctx->tgt.cfg.undeclared +
		       "\", which its .options do not declare";
	}
	d->target_ready = true;
	return "";
}

std::string device_start(struct device *d)
{
	struct device_ctx *ctx = &d->ctx;
	if (!d->target_ready)
		return "device_start before device_open";
	size_t page = sysconf(_SC_PAGESIZE);
	d->map_len = ((size_t)ctx->depth * sizeof(struct ublksrv_io_desc) + page - 1) / page * page;
	for (uint16_t q = 0; q < ctx->nr_queues; q++) {
		off_t off = (off_t)q * UBLK_DESC_AREA_STRIDE(page);
		void *p = mmap(nullptr, d->map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, ctx->ublkc_fd, off);
		if (p == MAP_FAILED)
			return "mmap of queue " + std::to_string(q) + " descriptors: " + strerror(errno);
		d->maps.push_back(p);
	}

	ctx->on_queue_failed = [d] {
		std::lock_guard<std::mutex> g(d->lock);
		d->failed = true;
		d->cond.notify_all();
	};
	for (uint16_t q = 0; q < ctx->nr_queues; q++) {
		auto qu = std::make_unique<struct queue>();
		qu->dev = ctx;
		qu->q_id = q;
		qu->stats = &ctx->stats[q];
		qu->descs = static_cast<const struct ublksrv_io_desc *>(d->maps[q]);
		qu->wake_fd = eventfd(0, EFD_CLOEXEC); /* owned by the device: closed in device_close */
		if (qu->wake_fd < 0)
			return std::string("eventfd: ") + strerror(errno);
		d->queues.push_back(std::move(qu));
	}
	for (auto &qu : d->queues) {
		struct queue *q = qu.get();
		q->thread = std::thread([q, d] {
			/* A name `top -H` and `ps -L` show: the queue each thread serves. */
			pthread_setname_np(pthread_self(), ("ublk-q" + std::to_string(q->q_id)).c_str());
			queue_run(q, [d] {
				std::lock_guard<std::mutex> g(d->lock);
				d->nr_ready++;
				d->cond.notify_all();
			});
			std::lock_guard<std::mutex> g(d->lock);
			d->nr_ended++;
			d->cond.notify_all();
		});
	}
	std::unique_lock<std::mutex> g(d->lock);
	d->cond.wait(g, [d] { return d->nr_ready == d->queues.size(); });
	g.unlock();
	for (auto &qu : d->queues) {
		std::string e = queue_error(qu.get());
		if (!e.empty())
			return "queue " + std::to_string(qu->q_id) + ": " + e;
	}
	return "";
}

std::string device_wait(struct device *d)
{
	std::unique_lock<std::mutex> g(d->lock);
	d->cond.wait(g, [d] { return d->failed || d->nr_ended == d->queues.size(); });
	g.unlock();
	return device_errors(d);
}

void device_drain(struct device *d)
{
	for (auto &qu : d->queues)
		queue_request_drain(qu.get());
}

void device_handover(struct device *d)
{
	for (auto &qu : d->queues)
		queue_request_handover(qu.get());
}

void device_prepare_handover(struct device *d)
{
	for (auto &qu : d->queues)
		queue_prepare_handover(qu.get());
}

std::string device_errors(struct device *d)
{
	std::string err;
	for (auto &qu : d->queues) {
		std::string e = queue_error(qu.get());
		if (!e.empty())
			err += (err.empty() ? "" : "; ") + ("queue " + std::to_string(qu->q_id) + ": " + e);
	}
	return err;
}

void device_force_stop(struct device *d)
{
	for (auto &qu : d->queues) {
		qu->force_stop = true;
		if (qu->wake_fd >= 0) {
			uint64_t one = 1;
			(void)!write(qu->wake_fd, &one, sizeof(one));
		}
	}
}

void device_join(struct device *d)
{
	for (auto &qu : d->queues)
		if (qu->thread.joinable())
			qu->thread.join();
}

void device_close(struct device *d)
{
	device_force_stop(d);
	device_join(d);
	for (void *p : d->maps)
		munmap(p, d->map_len);
	d->maps.clear();
	for (auto &qu : d->queues) {
		if (qu->wake_fd >= 0)
			close(qu->wake_fd);
		d->bufs_kept |= qu->bufs_kept;
	}
	d->queues.clear();
	if (d->target_ready && d->ctx.tgt.ops->deinit)
		d->ctx.tgt.ops->deinit(&d->ctx.tgt);
	d->target_ready = false;
	if (d->ctx.ublkc_fd >= 0)
		close(d->ctx.ublkc_fd);
	d->ctx.ublkc_fd = -1;
}
