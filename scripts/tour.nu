# A short tour of a local session. Run by scripts/tour.sh after the plugin is registered.
plugin use session

def step [title: string] { print $"\n(ansi green_bold)# ($title)(ansi reset)" }

step "new-session opens a session on this machine and returns its record"
let s = new-session --name tour
print ($s | select id name transport state availability idle_timeout | table)

step "state persists in the session: a variable, a command, the working directory"
invoke-session $s { let greeting = 'hello from the session'; def double [] { $in * 2 }; cd / }
# $greeting exists only in the session, so this code is a string (nu checks closures' variables).
print (invoke-session $s '{greeting: $greeting, doubled: (21 | double), pwd: $env.PWD}' | table)

step "values come back as Nushell values: a table from the session, filtered locally"
print (invoke-session $s { ls / | where type == dir | select name modified } | first 5 | table)

step "closures take their captured variables along"
let factor = 3
print (invoke-session $s { 1..5 | each { $in * $factor } } | table)

step "get-session lists the sessions of this nu"
print (get-session | select id name state availability | table)

step "remove-session stops and deletes it"
remove-session $s
print ($s | get-session | select id name state | table)
