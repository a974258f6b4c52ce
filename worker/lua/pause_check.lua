-- Before a call: is the destination paused, and if so, is it this caller's turn to probe it?
-- (A job's first call has this answer from its claim: claim.lua.)
-- KEYS[1] pause hash, KEYS[2] consecutive-failures counter
-- ARGV[1] now (ms), ARGV[2] probe interval (ms) when the pause names none
-- Returns pause_verdict's {state, until_ms, failures} (pause_lib.lua)
return pause_verdict(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2])
