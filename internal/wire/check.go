package wire

// Check runs every check of Decode on data, without decoding it: at most
// limits.MaxBytes bytes, no byte order mark, nesting at most
// limits.MaxDepth, valid UTF-8, no unpaired surrogate escapes, no duplicate
// key in any object, nothing but whitespace after the value. It is for
// values that one side forwards raw inside a body of its own (the records
// of a chunk): a value that passes Check, placed inside a body whose own
// nesting is added to its depth, passes the receiver's Decode.
//
// Every error is a *DecodeError and never contains input bytes.
func Check(data []byte, limits Limits) error {
	if max := limits.maxBytes(); len(data) > max {
		return &DecodeError{Offset: int64(max), Reason: reasonTooLarge, tooLarge: true}
	}
	if len(data) == 0 {
		return &DecodeError{Offset: 0, Reason: reasonEmpty}
	}
	if len(data) >= len(bom) && string(data[:len(bom)]) == string(bom) {
		return &DecodeError{Offset: 0, Reason: reasonBOM}
	}
	s := scannerPool.Get().(*scanner)
	err := s.scan(data, nil, limits.maxDepth())
	s.release()
	return err
}
