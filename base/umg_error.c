#include "umg_error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char err_msg[512];

const char *umg_strerror(int code)
{
    switch (code) {
#define UMG_X_DESC(name, value, wire, desc) case value: return desc;
        UMG_ERROR_TABLE(UMG_X_DESC)
#undef UMG_X_DESC
    }
    return "unknown error";
}

const char *umg_error_name(int code)
{
    switch (code) {
#define UMG_X_WIRE(name, value, wire, desc) case value: return wire;
        UMG_ERROR_TABLE(UMG_X_WIRE)
#undef UMG_X_WIRE
    }
    return "internal";
}

int umg_err_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *umg_err_msg(void) { return err_msg; }

void umg_err_clear(void) { err_msg[0] = '\0'; }

int umg_err_from_errno(int err)
{
    switch (err) {
    case 0: return UMG_OK;
    case ENOENT: case ENOTDIR: return UMG_ENOENT;
    case ENOSPC: case EDQUOT: return UMG_ENOSPC;
    case EACCES: case EPERM: case EROFS: return UMG_EPERM;
    case ENOMEM: return UMG_ENOMEM;
    case EEXIST: return UMG_EEXIST;
    case EINVAL: return UMG_EINVAL;
    case EFBIG: case E2BIG: return UMG_ETOOBIG;
    case EBUSY: return UMG_EBUSY;
    case ETIMEDOUT: return UMG_ETIMEOUT;
    default: return UMG_EIO;
    }
}
