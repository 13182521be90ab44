# A tour of a session on this machine. Run by scripts/tour.sh after the plugin is registered.
# The same works with a computer name in place of `new-session`'s nothing (new-session web1).
plugin use session

def step [title: string] { print $"\n(ansi green_bold)# ($title)(ansi reset)" }

step "new-session opens a session on this machine: a Nushell engine that lives on its host"
let s = new-session --name tour
print ($s | select id name computer_name transport state availability | table)

step "state persists in the session: a variable, a definition, the working directory"
invoke-session $s { let greeting = 'hello from the session'; def double [] { $in * 2 }; cd / }
# $greeting exists only in the session, so this code is a string (nu checks closures' variables).
print (invoke-session $s '{greeting: $greeting, doubled: (21 | double), pwd: $env.PWD}' | table)

step "values come back as Nushell values: a table from the session, filtered here"
print (invoke-session $s { ls / | where type == dir | select name modified } | first 4 | table)

step "give it work and disconnect: the work goes on, on the host, with nobody watching"
print (invoke-session $s {
    1..5 | each {|i| sleep 400ms; {step: $i, done_at: (date now | format date '%H:%M:%S%.3f')} }
} --disconnected | select id name state availability | table)

step "a second nu process (another terminal, or another machine over SSH) picks it up"
let second = r#'
    plugin use session
    print $"(ansi cyan)this is nu process ($nu.pid): what does this user have on localhost?(ansi reset)"
    let found = get-session --computer-name localhost | where name == tour
    print ($found | select id name state availability created | table)
    print $"(ansi cyan)connect to it: its variables and working directory came along(ansi reset)"
    let s = $found | where state == Disconnected | connect-session
    print ($s | select id name state availability | table)
    print (invoke-session $s '{greeting: $greeting, pwd: $env.PWD}' | table)
    print $"(ansi cyan)collect what it produced while nobody was connected, each value exactly once(ansi reset)"
    print (receive-session $s | table)
    print $"(ansi cyan)and remove it: it stops and is deleted on its host(ansi reset)"
    remove-session $s
'#
^$nu.current-exe --commands $second

step "back in the first process: the host's answer wins, the session is gone"
print (get-session --computer-name localhost | where name == tour | length | $"sessions named tour on localhost: ($in)")
print ($s | get-session | select id name state | table)
