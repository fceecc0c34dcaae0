module qtap.invalid/goh2

go 1.22
