import sys, time
# usage: gen.py LIB TAG N STEP_MS IDLE_MS [anon]
lib, tag, n, step, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
anon = len(sys.argv) > 6 and sys.argv[6] == 'anon'
first = int(sys.argv[7]) if len(sys.argv) > 7 else 0
last = int(sys.argv[8]) if len(sys.argv) > 8 else n
now0 = int(time.time() * 1000)
blob = 'x' * 400
out = sys.stdout.buffer
def cmd(*a):
    a = [x if isinstance(x, bytes) else str(x).encode() for x in a]
    out.write(b'*%d\r\n' % len(a))
    for x in a:
        out.write(b'$%d\r\n%s\r\n' % (len(x), x))
key = 'p{%s}:s:x' % tag
index = 'p{%s}:u:alice' % tag
for i in range(first, last + 1):
    now = now0 + i * step
    keys = [key] if anon else [key, index]
    cmd('FCALL', lib + '_save', len(keys), *keys, i, blob, now, idle, 0, 'web', 'n%d' % i, 100)
