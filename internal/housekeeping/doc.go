// Package housekeeping holds no code: its tests keep the repository in order (formatting, import boundaries, release builds).
package housekeeping
