# Abusive client traffic for the lamina NBD server, driven through python3-libnbd (the nbdsh
# module) with libnbd's client-side checks off. Prints "OK <what>" per check; exits non-zero on
# the first unexpected outcome. Usage: python3 abuse.py URI
import errno
import os
import sys

import nbd

uri = sys.argv[1]


def fail(msg):
    print("FAIL", msg, flush=True)
    sys.exit(1)


def expect_err(fn, code, what):
    try:
        fn()
    except nbd.Error as e:
        # python-libnbd reports errno as a name ("EINVAL"); accept the number too.
        if e.errno not in (code, errno.errorcode[code]):
            fail("%s: errno %s, want %s (%s)" % (what, e.errno, code, e))
        print("OK", what, flush=True)
        return
    fail("%s: succeeded" % what)


h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(uri)
size = h.get_size()
expect_err(lambda: h.pread(512, size), errno.EINVAL, "read beyond EOF")
expect_err(lambda: h.pread(1024, size - 512), errno.EINVAL, "read crossing EOF")
expect_err(lambda: h.pread(512, 2**64 - 256), errno.EINVAL, "read at overflowing offset")
expect_err(lambda: h.pwrite(b"x" * 512, size), errno.ENOSPC, "write beyond EOF")
expect_err(lambda: h.trim(1024, size - 512), errno.EINVAL, "trim crossing EOF")
expect_err(lambda: h.zero(1024, size - 512), errno.ENOSPC, "zero crossing EOF")
expect_err(lambda: h.block_status(512, size, lambda *a: 0), errno.EINVAL, "block status beyond EOF")
expect_err(lambda: h.pread(512, 0, nbd.CMD_FLAG_FAST_ZERO), errno.EINVAL, "read with FAST_ZERO")
expect_err(lambda: h.pwrite(b"x", 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL, "write with NO_HOLE")
expect_err(lambda: h.pread(33 * 1024 * 1024, 0), errno.EINVAL, "33 MiB read")
# The connection is still usable after every error.
h.pwrite(b"a" * 4096, 0)
if h.pread(4096, 0) != b"a" * 4096:
    fail("read back after errors")
h.pread(0, 0)
print("OK connection survives errors", flush=True)

# Disconnect with requests in flight (libnbd sends DISC without waiting for replies).
buf = nbd.Buffer.from_bytearray(bytearray(b"z" * 65536))
for i in range(64):
    h.aio_pwrite(buf, 65536 * i)
h.shutdown(nbd.SHUTDOWN_ABANDON_PENDING)
del h
print("OK disconnect with requests in flight", flush=True)

# 10,000 options in one handshake: the server must cut us off.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
try:
    for i in range(10000):
        h.opt_list(lambda name, desc: 0)
    fail("10,000 options accepted")
except nbd.Error as e:
    print("OK 10,000 options -> dropped after %d (%s)" % (i, e), flush=True)
del h

# Unknown export via GO.
h = nbd.NBD()
h.set_export_name("no-such-export")
try:
    h.connect_uri(uri.rsplit("/", 1)[0] + "/no-such-export")
    fail("unknown export accepted")
except nbd.Error:
    print("OK unknown export refused", flush=True)
del h

# Finally vanish with writes in flight (no DISC at all).
h = nbd.NBD()
h.connect_uri(uri)
for i in range(64):
    h.aio_pwrite(buf, 65536 * i)
print("OK exiting with requests in flight", flush=True)
os._exit(0)
