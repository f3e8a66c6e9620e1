package wire

// ValidTaskID reports whether s is a task_id: [A-Za-z0-9_-]{1,64} (§3).
func ValidTaskID(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isLower(c) && !isDigit(c) && !('A' <= c && c <= 'Z') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ValidBusinessID reports whether s is a business_id, the vault's key for a
// connector: [a-z0-9][a-z0-9._-]{0,63} (§3).
func ValidBusinessID(s string) bool {
	if len(s) < 1 || len(s) > 64 || (!isLower(s[0]) && !isDigit(s[0])) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isLower(c) && !isDigit(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isLower(c byte) bool { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
