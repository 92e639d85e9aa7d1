/*
 * Process handles for signalling a server or supervisor: a pidfd names one process for good, so a pid
 * that was proven ours and then reused by another process (it ended meanwhile) is never signalled.
 * Each call is one non-blocking syscall, safe on the JavaScript thread.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <napi.h>

#include "exports.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

static Napi::Value throw_errno(Napi::Env env, const char *what, int err)
{
	Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err));
	e.Set("code", Napi::String::New(env, err == ESRCH ? "ESRCH" : err == EPERM ? "EPERM" : err == ENOSYS ? "ENOSYS" : "EIO"));
	e.ThrowAsJavaScriptException();
	return env.Undefined();
}

/* pidfdOpen(pid): a close-on-exec pidfd (the caller closes it with fs.closeSync). */
static Napi::Value PidfdOpen(const Napi::CallbackInfo &info)
{
	int pid = info[0].As<Napi::Number>().Int32Value();
	long fd = syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return throw_errno(info.Env(), "pidfd_open", errno);
	return Napi::Number::New(info.Env(), (double)fd);
}

/* pidfdSignal(fd, signo): ESRCH once the process has ended. */
static Napi::Value PidfdSignal(const Napi::CallbackInfo &info)
{
	int fd = info[0].As<Napi::Number>().Int32Value(), sig = info[1].As<Napi::Number>().Int32Value();
	if (syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0) < 0)
		return throw_errno(info.Env(), "pidfd_send_signal", errno);
	return info.Env().Undefined();
}

/* pidfdExited(fd): the process has ended (a zombie counts: it serves nothing any more). */
static Napi::Value PidfdExited(const Napi::CallbackInfo &info)
{
	struct pollfd p = {info[0].As<Napi::Number>().Int32Value(), POLLIN, 0};
	return Napi::Boolean::New(info.Env(), poll(&p, 1, 0) > 0);
}

void pidfd_exports(Napi::Env env, Napi::Object exports)
{
	exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
	exports.Set("pidfdSignal", Napi::Function::New(env, PidfdSignal));
	exports.Set("pidfdExited", Napi::Function::New(env, PidfdExited));
}
