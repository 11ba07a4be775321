
m!

system	Be brief.


userHi