# The fleet benchmark itself; run by scripts/bench-fleet.sh, which sets up the hosts and has
# already timed the baseline on them.
let n = $env.FLEET_HOSTS | into int
let hosts = 1..$n | each {|i| $"h($i | fill --alignment right --character '0' --width 3)" }
let baseline = ($env.FLEET_BASELINE_SECS | into float) * 1sec | into duration

# What one process has used: CPU (user + system), resident memory, open descriptors.
def usage [pid: int] {
    let stat = open $"/proc/($pid)/stat" | split row ') ' | last | split row ' '
    let ticks = ($stat | get 11 | into int) + ($stat | get 12 | into int)
    let rss = open $"/proc/($pid)/status" | lines | where $it starts-with 'VmRSS' | first | split row -r '\s+' | get 1 | into int
    {cpu: ($ticks * 10ms), rss: ($rss * 1024 | into filesize), fds: (ls $"/proc/($pid)/fd" | length)}
}

# The whole machine's busy CPU time.
def machine_cpu [] {
    let f = open /proc/stat | lines | first | split row -r '\s+' | skip 1 | take 8 | into int
    ($f | math sum) - ($f | get 3) - ($f | get 4) | $in * 10ms
}

def median_of [times: int, f: closure] {
    1..$times | each {|_| null | timeit $f } | math median
}

get-session | ignore
let plugin = plugin list | where name == session | get 0.pid
let before = usage $plugin
let machine_before = machine_cpu
if ($env.FLEET_ACCT? | is-not-empty) { ^accton $env.FLEET_ACCT }
let open = timeit {
    let opened = new-session ...$hosts | where state? == Opened | length
    if $opened != $n { error make {msg: $"only ($opened) of ($n) sessions opened"} }
}
if ($env.FLEET_ACCT? | is-not-empty) { ^accton off }
let machine_open = (machine_cpu) - $machine_before
let after = usage $plugin
let all = get-session
let first_liner = timeit { invoke-session $all { 1 + 1 } | length | if $in != $n { error make {msg: $"($in) results"} } }
let liner = median_of 5 { invoke-session $all { 1 + 1 } | length }
let by_session = median_of 5 { invoke-session $all --by-session { 1 + 1 } | length }
get-session | remove-session
[
    [measure, ours, baseline, "baseline is"];
    [$"open ($n) sessions on ($n) hosts \(one new-session, throttle 32\)", $open, null, null]
    [$"one-liner `1 + 1` on the ($n) open sessions \(median of 5\)", $liner, $baseline, $"xargs -P 32: ssh host nu -n -c '1 + 1', ($n) hosts \(($env.FLEET_BASELINE_OK) answered\)"]
    ["  its first run", $first_liner, null, null]
    ["  with --by-session (median of 5)", $by_session, null, null]
    [$"open all ($n) + the one-liner", ($open + $first_liner), $baseline, "the same xargs run"]
    ["  speed-up of the one-liner", ($baseline / $liner | math round --precision 1), null, "target ≥ 100x"]
    ["  speed-up of open + one-liner", ($baseline / ($open + $first_liner) | math round --precision 2), null, "target ≥ 4x"]
    ["client (plugin) memory per SSH session", (($after.rss - $before.rss) / $n), null, "target < 1 MiB"]
    ["client (plugin) open files per SSH session", (($after.fds - $before.fds) / $n), null, null]
    ["client (plugin) CPU to open them", ($after.cpu - $before.cpu), null, null]
    ["machine CPU to open them (all processes, 2 cores)", $machine_open, null, "server side: sshd, managers, workers"]
] | table --width 200 | print
