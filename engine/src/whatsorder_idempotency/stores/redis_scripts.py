"""The Redis store's Lua scripts: claim, renew, complete and release, each one atomic step.

Each decides on the caller's ``now`` (the engine's clock); times are integer microseconds since
the Unix epoch. Complete and release PUBLISH the key's token so that waits elsewhere wake.
"""

# What a decision needs of a record, in this order: the claim returns them, ``get`` reads them.
READ_FIELDS = (
    "status",
    "epoch",
    "locked_until_us",
    "expires_at_us",
    "fingerprint",
    "response_status",
    "response_body",
    "response_headers",
)

# KEYS[1]: the record. ARGV: now, locked_until, expire_ms, fingerprint, then optional
# field/value pairs (request_body, source_ip). Returns {1, epoch} when claimed, else
# {0, READ_FIELDS' values} as found: one HMGET serves the decision and the replay.
CLAIM = (
    """
local record = KEYS[1]
local now = tonumber(ARGV[1])
local found = redis.call('HMGET', record, """
    + ", ".join(f"'{name}'" for name in READ_FIELDS)
    + """)
local status, epoch, locked_until, expires_at = found[1], found[2], found[3], found[4]
local new_epoch = 1
if status then
    local free
    if status == 'completed' then
        free = expires_at and tonumber(expires_at) <= now
    else
        free = not (locked_until and tonumber(locked_until) > now)
    end
    if not free then
        return {0, found}
    end
    new_epoch = tonumber(epoch) + 1
    redis.call('DEL', record)
end
redis.call('HSET', record, 'fingerprint', ARGV[4], 'status', 'in_progress',
    'epoch', new_epoch, 'locked_until_us', ARGV[2], 'created_at_us', ARGV[1])
for i = 5, #ARGV, 2 do
    redis.call('HSET', record, ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', record, ARGV[3])
return {1, new_epoch}
"""
)

# The compare-and-set every holder's step starts with (ARGV[1]: the holder's epoch).
HOLDER_ONLY = """
local status, epoch, held = unpack(redis.call('HMGET', KEYS[1], 'status', 'epoch',
    'locked_until_us'))
if status ~= 'in_progress' or tonumber(epoch) ~= tonumber(ARGV[1]) or not held then
    return 0
end
"""

# ARGV: epoch, locked_until. The key's expiry moves as far as the lease moved, so the record
# still outlives its lease by ttl. A renewal that lands after a later one (the heartbeat gave
# up on it) leaves the lease as it is.
RENEW = (
    HOLDER_ONLY
    + """
local previous = tonumber(redis.call('HGET', KEYS[1], 'locked_until_us'))
if tonumber(ARGV[2]) <= previous then
    return 1
end
redis.call('HSET', KEYS[1], 'locked_until_us', ARGV[2])
local moved_ms = math.ceil((tonumber(ARGV[2]) - previous) / 1000)
local remaining_ms = redis.call('PTTL', KEYS[1])
if moved_ms > 0 and remaining_ms > 0 then
    redis.call('PEXPIRE', KEYS[1], remaining_ms + moved_ms)
end
return 1
"""
)

# ARGV: epoch, now, expires_at, expire_ms, response status, body, headers (JSON), channel,
# the key's token.
COMPLETE = (
    HOLDER_ONLY
    + """
redis.call('HDEL', KEYS[1], 'locked_until_us')
redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at_us', ARGV[2],
    'expires_at_us', ARGV[3], 'response_status', ARGV[5], 'response_body', ARGV[6],
    'response_headers', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
"""
)

# ARGV: epoch, channel, the key's token. The lease ends now but the record stays, so the next
# claim takes it over with a higher epoch and the released holder stays fenced out.
RELEASE = (
    HOLDER_ONLY
    + """
redis.call('HDEL', KEYS[1], 'locked_until_us')
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)
