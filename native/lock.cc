/*
 * An exclusive advisory lock on an open file (flock): it belongs to the open file, so it ends with the
 * process that holds it, however that process ends. A mark of who is at work is then never stale.
 * One non-blocking syscall, safe on the JavaScript thread.
 */
#include <errno.h>
#include <string.h>
#include <sys/file.h>

#include <napi.h>

#include "exports.h"

/* flockTry(fd): true if this process now holds the lock, false if another holds it. */
static Napi::Value FlockTry(const Napi::CallbackInfo &info)
{
	int fd = info[0].As<Napi::Number>().Int32Value();
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return Napi::Boolean::New(info.Env(), true);
	if (errno == EWOULDBLOCK)
		return Napi::Boolean::New(info.Env(), false);
	Napi::Error::New(info.Env(), std::string("flock: ") + strerror(errno)).ThrowAsJavaScriptException();
	return info.Env().Undefined();
}

void lock_exports(Napi::Env env, Napi::Object exports)
{
	exports.Set("flockTry", Napi::Function::New(env, FlockTry));
}
