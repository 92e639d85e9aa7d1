/* The data plane of one device: /dev/ublkcN, its descriptor mappings and one queue thread per queue. */
#pragma once
#include <condition_variable>
#include <memory>
#include <mutex>

#include "queue.h"

/*
 * Ownership: the device owns the char device fd, the mappings, the eventfds and the queue objects; each
 * queue thread owns its ring and per-tag buffers and releases them itself before it ends. `lock` guards
 * nr_ready, nr_ended and failed, which queue threads change and JavaScript's workers wait on.
 */
struct device {
	struct device_ctx ctx;
	std::vector<std::unique_ptr<struct queue>> queues;
	std::vector<void *> maps;
	size_t map_len;
	bool target_ready;
	bool target_failed; /* start failed in the target's init: the backend, not the kernel */
	std::mutex lock;
	std::condition_variable cond;
	unsigned nr_ready;
	unsigned nr_ended;
	bool failed;
	bool bufs_kept; /* a queue's teardown timed out: the host's buffers (cfg.bufs) must never be freed */
};

/* Opens /dev/ublkcN and runs the target's init (a network handshake): the target's status is readable
 * from here on, before any tag is fetched, so a re-attach can be refused while the device still holds
 * its IO. Blocks; returns "" or the failure. */
std::string device_open(struct device *d);
/* After device_open: maps the descriptors, starts the queue threads and waits (on the calling, non-JS
 * thread) until every queue has FETCHed every tag. Returns "" or the first failure; on failure
 * everything already made is released by device_close(). */
std::string device_start(struct device *d);
/* Waits until every queue thread has ended, or one queue failed; returns "" or the failure. */
std::string device_wait(struct device *d);
/* Asks every queue to stop holding requests (they fail with EIO), ahead of STOP_DEV. Never blocks. */
void device_drain(struct device *d);
/* Asks every queue to hand the device over to a next server (queue_request_handover). Never blocks. */
void device_handover(struct device *d);
/* Tells every queue a handover is coming (queue_prepare_handover), ahead of QUIESCE_DEV. Never blocks. */
void device_prepare_handover(struct device *d);
/* Waits for every queue thread to end (after STOP_DEV aborted its tags, or a forced stop). */
void device_join(struct device *d);
/* Asks queue threads to end now even if the kernel never aborts their tags. */
void device_force_stop(struct device *d);
/* Every queue's error, joined; only after device_join. */
std::string device_errors(struct device *d);
/* Releases everything device_start made; stops and joins the threads first. */
void device_close(struct device *d);
