package main

import (
	"flag"
	"io"
	"strings"
)

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// parseInterleaved parses flags that may come before or after positional
// arguments (SPEC.md: "Flags may come before or after the positional
// arguments"). "--" ends flag parsing.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos, rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func wantArgs(name string, pos []string, min, max int) error {
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		return usagef("%s: wrong number of arguments (%d): see tier3-agent help", name, len(pos))
	}
	return nil
}
