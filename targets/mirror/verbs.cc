/*
 * mirror: its verbs (`ublk-ts mirror fail|re-add|remove|check`, through the server's control socket) and
 * the status `list` and `mirror status` show.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <sstream>

#include "mirror.h"

static std::string ok(const std::string &msg)
{
	return "{\"ok\":true,\"message\":\"" + msg + "\"}";
}

static std::string refused(const std::string &why)
{
	return "{\"ok\":false,\"error\":\"" + why + "\"}";
}

static const char *state_name(uint8_t s)
{
	switch (s) {
	case LEG_IN_SYNC:
		return "in-sync";
	case LEG_FAILED:
		return "failed";
	case LEG_RESYNC:
		return "resyncing";
	}
	return "empty";
}

static const char *op_name(uint8_t op)
{
	switch (op) {
	case UBLK_IO_OP_READ:
		return "read";
	case UBLK_IO_OP_WRITE:
		return "write";
	case UBLK_IO_OP_FLUSH:
		return "flush";
	case UBLK_IO_OP_DISCARD:
		return "discard";
	case UBLK_IO_OP_WRITE_ZEROES:
		return "write-zeroes";
	}
	return "request";
}

static std::string errno_text(int err)
{
	const char *name = strerrorname_np(err), *desc = strerrordesc_np(err);
	return (name ? name : "errno " + std::to_string(err)) + (desc ? std::string(" (") + desc + ")" : "");
}

/* Bytes per second as MB/s, as the options give them. */
static std::string mb(uint64_t bytes)
{
	char s[32];
	snprintf(s, sizeof(s), "%g", (double)bytes / 1e6);
	return s;
}

/* A number of bytes per second, or "-": the value kept. */
static bool rate_arg(const std::string &s, uint64_t kept, uint64_t *out)
{
	if (s == "-")
		return (*out = kept, true);
	if (s.empty() || s.size() > 15 || s.find_first_not_of("0123456789") != std::string::npos)
		return false;
	*out = std::stoull(s);
	return true;
}

std::string mirror_command(struct mirror *m, const std::string &cmd)
{
	std::istringstream in(cmd);
	std::string verb, arg;
	in >> verb;
	if (verb == "check") {
		struct scrub *s = &m->scrub;
		bool repair = false;
		int from = -1;
		if (in >> arg) {
			repair = arg == "repair";
			if (!repair)
				return refused("check takes repair [LEG]");
			if (in >> from && (from < 1 || from > (int)m->n || m->legs[from - 1].state.load() != LEG_IN_SYNC))
				return refused("--from " + std::to_string(from) + " is not an in-sync leg");
			from -= from > 0;
		}
		if (s->running.load())
			return refused("a check is running (" + std::to_string(s->pos.load() * 100 / std::max<uint64_t>(m->nr_chunks, 1)) + "%)");
		if (__builtin_popcount(m->readable.load()) < 2)
			return refused("a check needs two in-sync legs");
		{
			std::lock_guard<std::mutex> g(s->lock);
			s->ranges.clear();
			s->nr_ranges = 0;
		}
		s->pos = 0;
		s->mismatched = 0;
		s->repaired = 0;
		s->repair = repair;
		s->from = from;
		s->running = true;
		sync_kick(m);
		return ok(repair ? "check and repair started" : "check started");
	}
	if (verb == "rate") {
		/* The server checked the numbers' form; what they mean together is checked here, against the
		 * values kept. */
		std::string a, b;
		uint64_t rate, min;
		if (!(in >> a >> b) || !rate_arg(a, m->rate.load(), &rate) || !rate_arg(b, m->min_rate.load(), &min))
			return refused("usage: rate MAX|- MIN|-");
		if (min == 0)
			return refused("--resync-min-rate must be above 0");
		/* A floor kept from before may be above a new cap: it yields to it (resync_floor), as the
		 * default floor does at add. One given with it may not. */
		if (rate && min > rate && b != "-")
			return refused("--resync-min-rate " + mb(min) + " is above --resync-rate " + mb(rate) +
				       ": the floor under user IO cannot exceed the cap");
		sync_rates(m, rate, min);
		return ok("resync at " + (rate ? "most " + mb(rate) + " MB/s" : "the legs' speed") + ", " +
			  mb(resync_floor(rate, min)) + " MB/s while user IO is active");
	}
	if (verb == "grow") {
		/* From the server's `resize`: "grow BYTES". */
		uint64_t size = 0;
		std::string why;
		if (!(in >> size))
			return refused("usage: grow BYTES");
		int ret = mirror_grow(m, size, &why);
		return ret < 0 ? refused(why) : ok("the mirror holds " + std::to_string(size) + " bytes");
	}
	if (verb == "add-leg" || verb == "replace") {
		/* From the server, which opened the new leg: "add-leg FD BLOCK_DISCARD", "replace L FD BLOCK_DISCARD". */
		int old = 0, fd = -1, bd = 0;
		if ((verb == "replace" && !(in >> old)) || !(in >> fd >> bd))
			return refused("usage: " + verb);
		std::string why;
		int slot = mirror_add_leg(m, fd, bd != 0, old - 1, &why);
		if (slot < 0)
			return refused(why);
		sync_kick(m);
		return ok("leg " + std::to_string(slot + 1) + " is resyncing" +
			  (verb == "replace" ? "; it takes leg " + std::to_string(old) + "'s place once in sync" : ""));
	}
	int leg = 0;
	if (!(in >> leg) || leg < 1 || leg > (int)m->n)
		return refused("--leg must be 1.." + std::to_string(m->n));
	unsigned i = (unsigned)leg - 1;
	std::string name = "leg " + std::to_string(leg);
	if (verb == "fail") {
		if (m->legs[i].state.load() == LEG_FAILED || m->legs[i].state.load() == LEG_EMPTY)
			return ok(name + " is failed");
		if (!mirror_fail_leg(m, i, 0, 0, 0))
			return refused(name + " is the last in-sync leg: the mirror would have nothing to read");
		return ok(name + " is failed");
	}
	if (verb == "re-add") {
		if (m->legs[i].fd.load() < 0)
			return refused(name + " is missing: `replace --leg " + std::to_string(leg) + " --with PATH` fills its slot");
		int ret = mirror_readd(m, i);
		if (ret < 0)
			return refused(name + (ret == -ENOSPC ? " is too small for this mirror" : " cannot be written: " + errno_text(-ret)));
		sync_kick(m);
		return ok(name + " is " + state_name(m->legs[i].state.load()));
	}
	if (verb == "remove") {
		if (mirror_remove(m, i) < 0)
			return refused(name + " is " + state_name(m->legs[i].state.load()) + ": only a failed leg is removed (fail it first)");
		return ok(name + " is removed");
	}
	return refused("unknown mirror verb " + verb);
}

std::string mirror_status_json(struct mirror *m)
{
	std::string legs, why, state = "clean";
	uint64_t lowest = UINT64_MAX;
	for (unsigned i = 0; i < m->n; i++) {
		const struct leg *l = &m->legs[i];
		uint8_t s = l->state.load();
		legs += std::string(i ? "," : "") + state_name(s);
		if (s == LEG_RESYNC) {
			state = "resyncing";
			lowest = std::min(lowest, l->pos.load());
		} else if (s != LEG_IN_SYNC && state == "clean") {
			state = "degraded";
		}
		int replaces = l->replaces.load();
		if (s == LEG_RESYNC && replaces >= 0)
			why += ",\"leg" + std::to_string(i + 1) + "\":\"replacing leg " + std::to_string(replaces + 1) + "\"";
		if (s == LEG_FAILED && l->known.load(std::memory_order_acquire)) {
			int err = l->err.load(std::memory_order_relaxed);
			why += ",\"leg" + std::to_string(i + 1) + "\":\"failed: " +
			       (err ? std::string(op_name(l->op.load(std::memory_order_relaxed))) + " at byte " +
					      std::to_string(l->off.load(std::memory_order_relaxed)) + ": " + errno_text(err)
				    : std::string("by ublk-ts mirror fail")) +
			       "\"";
		}
	}
	std::string out = "{\"mirror\":\"" + state + "\",\"legs\":\"" + legs + "\"" + why;
	out += ",\"dataSize\":" + std::to_string(m->data_size) + ",\"bitmapChunk\":" + std::to_string(chunk_bytes(m)) +
	       ",\"bitmapBits\":" + std::to_string(m->nr_chunks.load()) + ",\"bitmapDirty\":" + std::to_string(m->dirty.load()) +
	       ",\"events\":" + std::to_string(m->events.load());
	out += ",\"resyncCopied\":" + std::to_string(m->resync_copied.load());
	/* The cap (0: none) and the floor (never above the cap when in use) the resync and the check go by
	 * now: `mirror rate` changes them, and the server keeps them for a later one. */
	out += ",\"resyncRateMax\":" + std::to_string(m->rate.load()) + ",\"resyncRateMin\":" + std::to_string(m->min_rate.load());
	/* Which fd each slot has: the server keeps its saved --leg list in step with add-leg and replace. */
	std::string fds;
	for (unsigned i = 0; i < m->n.load(); i++)
		fds += (i ? "," : "") + std::to_string(m->legs[i].fd.load());
	out += ",\"legFds\":\"" + fds + "\"";
	if (lowest != UINT64_MAX) {
		double done = m->nr_chunks ? (double)lowest / (double)m->nr_chunks : 1;
		double secs = (double)(now_ns() - m->resync_started_ns.load()) / 1e9;
		double rate = secs > 0 ? (double)m->resync_copied.load() / secs : 0;
		char num[128];
		snprintf(num, sizeof(num), ",\"resync\":%.1f,\"resyncRate\":%.0f,\"resyncEta\":%.0f", done * 100, rate,
			 done > 0 ? secs * (1 - done) / done : -1);
		out += num;
		out += std::string(",\"resyncYielding\":") + (m->yielding.load(std::memory_order_relaxed) ? "true" : "false");
	}
	const struct scrub *s = &m->scrub;
	out += ",\"check\":\"" + std::string(s->running.load() ? "running" : s->pos.load() ? "done" : "never") + "\"";
	if (s->running.load() || s->pos.load()) {
		out += ",\"checkPercent\":" + std::to_string(s->pos.load() * 100 / std::max<uint64_t>(m->nr_chunks, 1)) +
		       ",\"mismatched\":" + std::to_string(s->mismatched.load()) + ",\"repaired\":" + std::to_string(s->repaired.load());
		if (s->running.load())
			out += std::string(",\"checkYielding\":") + (m->yielding.load(std::memory_order_relaxed) ? "true" : "false");
		std::lock_guard<std::mutex> g(const_cast<struct scrub *>(s)->lock);
		out += ",\"mismatchRanges\":\"" + s->ranges + "\"";
	}
	std::lock_guard<std::mutex> g(m->note_lock);
	if (!m->last_event.empty())
		out += ",\"syncNote\":\"" + m->last_event + "\"";
	return out + "}";
}
