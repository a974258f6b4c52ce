-- Give up this worker's claim on a job if it still holds it (a worker giving up on a job early):
-- the job keeps its state, and whoever takes its message next may claim it at once.
-- KEYS[1] the job hash; ARGV[1] the worker's token
if redis.call('HGET', KEYS[1], 'lock') == ARGV[1] then return redis.call('HDEL', KEYS[1], 'lock') end
return 0
