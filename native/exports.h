/* What each file of the N-API surface adds to the module (addon.cc puts them together). */
#pragma once
#include <napi.h>

/* control.cc: the control commands, each a Promise resolved from libuv's pool. */
void control_exports(Napi::Env env, Napi::Object exports);
/* device_object.cc: the class Device, the data plane of one device. */
Napi::Function device_class(Napi::Env env);
/* abi_table.cc: the kernel's command numbers, flags and struct sizes this build was compiled against. */
Napi::Object abi_table(Napi::Env env);
/* pidfd.cc: process handles for signalling. */
void pidfd_exports(Napi::Env env, Napi::Object exports);
