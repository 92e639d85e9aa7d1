/* The data plane of one device: /dev/ublkcN, its descriptor mappings and one queue thread per queue. */
#pragma once
#include <condition_variable>
#include <memory>
#include <mutex>

#include "queue.h"

struct device {
	struct device_ctx ctx;
	std::vector<std::unique_ptr<struct queue>> queues;
	std::vector<void *> maps;
	size_t map_len;
	bool target_ready;
	std::mutex lock;
	std::condition_variable cond;
	unsigned nr_ready;
};

/* Opens /dev/ublkcN, maps the descriptors, starts the queue threads and waits (on the calling, non-JS
 * thread) until every queue has FETCHed every tag. Returns "" or the first failure; on failure
 * everything already made is released by device_close(). */
std::string device_start(struct device *d);
/* Waits for every queue thread to end (after STOP_DEV aborted its tags, or a forced stop). */
void device_join(struct device *d);
/* Asks queue threads to end now even if the kernel never aborts their tags. */
void device_force_stop(struct device *d);
/* Releases everything device_start made; the threads must have ended. */
void device_close(struct device *d);
